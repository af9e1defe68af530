"""What the analytics service consumes: every other service's events, into the usage log.

One consumer group ("analytics") reads events.users, events.billing, events.files and
events.generation in batches (kit batch mode): a batch is one INSERT in one
transaction. The usage log's own key (event id, occurred_at) makes a redelivered
event a no-op, so the kit's inbox is skipped for these events (it would double
the writes and grow without the usage log's retention). The service publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Event, EventConsumer
from kit.server import Runtime
from services.analytics import partitions, usage_log
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import UsageStore

log = logging.getLogger("stylestudio.analytics.ingest")


class UsageIngest:
    """Turns a batch of events into usage records and writes them."""

    def __init__(self, store: UsageStore, settings: AnalyticsSettings) -> None:
        self._store = store
        self._settings = settings

    async def record_events(self, session: AsyncConnection, events: Sequence[Event]) -> None:
        now = datetime.now(UTC)
        skew = timedelta(seconds=self._settings.usage_max_clock_skew_seconds)
        entries = [usage_log.entry_from_event(event, now, skew) for event in events]
        oldest_kept = partitions.retention_start(now, self._settings.usage_retention_months)
        if oldest_kept is not None:
            expired = [e for e in entries if partitions.Month.of(e.created_at) < oldest_kept]
            if expired:
                # Their partition is gone (or would be dropped at once): counting them would lie.
                log.warning("events older than the retention skipped", extra={"count": len(expired)})
                entries = [e for e in entries if partitions.Month.of(e.created_at) >= oldest_kept]
        await self._store.record(session, entries)


def usage_consumer(runtime: Runtime, store: UsageStore) -> EventConsumer:
    settings = runtime.settings
    assert isinstance(settings, AnalyticsSettings)
    consumer = runtime.consumer(batch_size=settings.ingest_batch_size)
    ingest = UsageIngest(store, settings)
    for stream, actions in usage_log.EVENT_ACTIONS.items():
        consumer.on_batch(stream, actions.keys(), ingest.record_events, inbox=False)
    return consumer
