"""What the analytics service consumes: every other service's events, into the usage log.

One consumer group ("analytics") reads events.users, events.billing, events.files and
events.generation in batches (kit batch mode): a batch is one INSERT in one
transaction. The usage log's own key (event id, occurred_at) makes a redelivered
event a no-op, so the kit's inbox is skipped for these events (it would double
the writes and grow without the usage log's retention). The same group reads the
``audit.recorded`` events of every stream into the audit log (audit_log.py), keyed by the
event id as well. The service publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from kit import audit
from kit.events import Event, EventConsumer
from kit.server import Runtime
from services.analytics import audit_log, partitions, usage_log
from services.analytics.audit_store import AuditStore
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


class AuditIngest:
    """Stores a batch of ``audit.recorded`` events in the audit log."""

    def __init__(self, store: AuditStore, settings: AnalyticsSettings) -> None:
        self._store = store
        self._settings = settings

    async def record_events(self, session: AsyncConnection, events: Sequence[Event]) -> None:
        now = datetime.now(UTC)
        skew = timedelta(seconds=self._settings.usage_max_clock_skew_seconds)
        await self._store.record(session, [audit_log.entry_from_event(event, now, skew) for event in events])


def usage_consumer(runtime: Runtime, store: UsageStore, audit_store: AuditStore) -> EventConsumer:
    settings = runtime.settings
    assert isinstance(settings, AnalyticsSettings)
    consumer = runtime.consumer(batch_size=settings.ingest_batch_size)
    ingest = UsageIngest(store, settings)
    for stream, actions in usage_log.EVENT_ACTIONS.items():
        consumer.on_batch(stream, actions.keys(), ingest.record_events, inbox=False)
    audit_ingest = AuditIngest(audit_store, settings)
    for stream in audit_log.AUDIT_STREAMS:
        consumer.on_batch(stream, [audit.AUDIT_RECORDED], audit_ingest.record_events, inbox=False)
    return consumer
