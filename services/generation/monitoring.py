"""What the generation service tells Prometheus beyond the kit's figures (docs/operations.md,
"Metrics"): generations by outcome, their duration by model, and the queue's depth.

The instruments are module-level (recorded where the saga decides) and join the process's
registry in ``watch``; the queue depth is read when a scrape comes (kit.metrics samplers).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from kit.db import Database
from kit.metrics import ServiceMetrics, webhook_verification_failures
from services.generation import store
from services.generation.store import Generation

# Seconds from a generation's acceptance to its outcome: the local provider's second or two,
# a hosted model's minute, up to the deadline (generation_deadline_seconds, 600 by default).
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)

generations_finished = Counter(
    "stylestudio_generations_finished",
    "Generations that reached an outcome: completed, failed or canceled, by model.",
    ["outcome", "model"],
    registry=None,
)
generation_duration = Histogram(
    "stylestudio_generation_duration_seconds",
    "From a generation's acceptance to its recorded outcome, by model and outcome.",
    ["model", "outcome"],
    buckets=DURATION_BUCKETS,
    registry=None,
)


def record_outcome(generation: Generation) -> None:
    """A generation's outcome was recorded (once per generation: store.record_outcome)."""
    outcome = str(generation.status).lower()
    generations_finished.labels(outcome, generation.model).inc()
    if generation.completed_at is not None and generation.created_at is not None:
        seconds = (generation.completed_at - generation.created_at).total_seconds()
        generation_duration.labels(generation.model, outcome).observe(max(0.0, seconds))


class QueueDepth:
    """Generations accepted and waiting for a worker (QUEUED), the database's count."""

    def __init__(self, metrics: ServiceMetrics, db: Database) -> None:
        self._db = db
        self._depth = Gauge(
            "stylestudio_generation_queue_depth",
            "Generations accepted and waiting for a worker (status QUEUED).",
            registry=metrics.registry,
        )

    async def __call__(self) -> None:
        async with self._db.autocommit() as session:
            self._depth.set(await store.queued_count(session))


def watch(metrics: ServiceMetrics, db: Database) -> None:
    metrics.register(generations_finished, generation_duration, webhook_verification_failures)
    metrics.sample(QueueDepth(metrics, db))
