"""Start the analytics service: ``python -m services.analytics``."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from kit.events import EventConsumer
from kit.server import Registration, Runtime, ServiceDefinition, run
from services.analytics import api, audit_log, events, models, partitions
from services.analytics.audit_store import AuditStore
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import UsageStore


class _Parts:
    """The servicer, the consumer and the partition loop share one store (and its partition cache)."""

    def __init__(self) -> None:
        self._store: UsageStore | None = None
        self._audit: AuditStore | None = None

    def store(self, runtime: Runtime) -> UsageStore:
        if self._store is None:
            self._store = UsageStore(runtime.db)
        return self._store

    def audit(self, runtime: Runtime) -> AuditStore:
        if self._audit is None:
            self._audit = AuditStore(runtime.db)
        return self._audit

    def register(self, runtime: Runtime) -> Sequence[Registration]:
        return api.registrations(runtime, self.store(runtime), self.audit(runtime))

    def consumers(self, runtime: Runtime) -> Sequence[EventConsumer]:
        return [events.usage_consumer(runtime, self.store(runtime), self.audit(runtime))]

    def background(self, runtime: Runtime) -> Sequence[Coroutine[Any, Any, None]]:
        s = runtime.settings
        assert isinstance(s, AnalyticsSettings)
        maintain = partitions.maintain(
            self.store(runtime),
            s.usage_partitions_ahead_months,
            s.usage_retention_months,
            s.usage_partition_check_interval_seconds,
        )
        purge = audit_log.purge(self.audit(runtime), s.audit_retention_days, s.audit_purge_interval_seconds)
        return [maintain, purge]


def definition(settings: AnalyticsSettings | None = None) -> ServiceDefinition:
    parts = _Parts()
    return ServiceDefinition(
        name="analytics",
        settings=settings or AnalyticsSettings(),
        metadata=models.metadata,
        register=parts.register,
        consumers=parts.consumers,
        background=parts.background,
    )


if __name__ == "__main__":
    run(definition())
