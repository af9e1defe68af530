"""What the billing service tells Prometheus beyond the kit's figures (docs/operations.md,
"Metrics"): holds outstanding and the age of the oldest, read when a scrape comes, and Stripe
webhooks whose verification failed (kit.metrics.webhook_verification_failures)."""

from __future__ import annotations

from prometheus_client import Gauge

from kit.db import Database
from kit.metrics import ServiceMetrics, webhook_verification_failures
from services.billing import store


class PendingHolds:
    """Holds neither captured nor released yet: a generation's tokens set aside."""

    def __init__(self, metrics: ServiceMetrics, db: Database) -> None:
        self._db = db
        self._count = Gauge(
            "stylestudio_billing_holds_pending",
            "Holds neither captured nor released yet (tokens set aside for generations under way).",
            registry=metrics.registry,
        )
        self._oldest = Gauge(
            "stylestudio_billing_oldest_pending_hold_age_seconds",
            "Age of the oldest pending hold (0: none); past the generation deadline, a saga is stuck.",
            registry=metrics.registry,
        )

    async def __call__(self) -> None:
        async with self._db.autocommit() as session:
            count, oldest = await store.pending_holds(session)
        self._count.set(count)
        self._oldest.set(oldest)


def watch(metrics: ServiceMetrics, db: Database) -> None:
    metrics.register(webhook_verification_failures)
    metrics.sample(PendingHolds(metrics, db))
