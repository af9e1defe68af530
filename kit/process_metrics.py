"""What the kit knows about every service process, as Prometheus metrics (kit/metrics.py serves
them): event-loop lag, the database pool, the outbox and the relay's lag, and each consumer
group's lag, pending messages and dead letters.

Pool figures are read on scrape (a few integers); the outbox and the streams cost a query or
two, so they are samplers, run before a scrape answers at most once per ``metrics_refresh_seconds``:
one bounded ``SELECT`` over the outbox and, per stream a consumer group reads, one ``XINFO
GROUPS`` and one ``XLEN`` of its dead letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from redis.asyncio import Redis

from kit.db import Database
from kit.events import EventConsumer, stream_key
from kit.metrics import ServiceMetrics

# How often the loop-lag sampler wakes; a lag is how much later than asked it woke.
LOOP_LAG_INTERVAL_SECONDS = 0.5
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The outbox query reads at most this many rows: past it, "at least this many" is all one needs.
OUTBOX_COUNT_LIMIT = 100_000


class PoolCollector(Collector):
    """The service's SQLAlchemy pool, read on scrape (OpenTelemetry's db.client.connection.*)."""

    def __init__(self, db: Database, pool_name: str) -> None:
        self._db, self._name = db, pool_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool: Any = self._db.engine.pool
        checked_out, idle = int(pool.checkedout()), int(pool.checkedin())
        count = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections of the service's pool by state: used (checked out) or idle.",
            labels=["db_client_connection_pool_name", "db_client_connection_state"],
        )
        count.add_metric([self._name, "used"], checked_out)
        count.add_metric([self._name, "idle"], idle)
        yield count
        most = GaugeMetricFamily(
            "db_client_connection_max",
            "Connections the pool may open: its size plus its overflow.",
            labels=["db_client_connection_pool_name"],
        )
        most.add_metric([self._name], self._db.pool_size + self._db.max_overflow)
        yield most
        overflow = GaugeMetricFamily(
            "stylestudio_db_pool_overflow_connections",
            "Connections open beyond the pool's size (at most db_max_overflow).",
            labels=["db_client_connection_pool_name"],
        )
        overflow.add_metric([self._name], max(0, checked_out + idle - self._db.pool_size))
        yield overflow


class OutboxSampler:
    """Rows waiting in the service's outbox and how long the oldest has waited (the relay's lag)."""

    def __init__(self, metrics: ServiceMetrics, db: Database, outbox: sa.Table) -> None:
        self._db = db
        waiting = sa.select(outbox.c.created_at).order_by(outbox.c.seq).limit(OUTBOX_COUNT_LIMIT).subquery()
        self._query = sa.select(
            sa.func.count(),
            sa.func.coalesce(
                sa.func.extract("epoch", sa.func.clock_timestamp() - sa.func.min(waiting.c.created_at)), 0
            ),
        ).select_from(waiting)
        self._rows = Gauge(
            "stylestudio_outbox_rows",
            f"Events written but not yet relayed to Redis (counted up to {OUTBOX_COUNT_LIMIT}).",
            registry=metrics.registry,
        )
        self._age = Gauge(
            "stylestudio_outbox_oldest_age_seconds",
            "How long the oldest event waiting in the outbox has waited: the relay's lag (0: none waiting).",
            registry=metrics.registry,
        )

    async def __call__(self) -> None:
        async with self._db.autocommit() as session:
            rows, age = (await session.execute(self._query)).one()
        self._rows.set(rows)
        self._age.set(max(0.0, float(age)))


class ConsumerGroupSampler:
    """Per stream and consumer group of this service: lag (entries not yet read by the group),
    pending (read, not yet acknowledged), and the stream's dead letters."""

    def __init__(
        self, metrics: ServiceMetrics, redis: Redis, prefix: str, consumers: Sequence[EventConsumer]
    ) -> None:
        self._redis: Any = redis
        self._prefix = prefix
        self._groups = sorted(
            {
                (subscription.stream, consumer.group)
                for consumer in consumers
                for subscription in consumer.streams.values()
            }
        )
        labels = ["stream", "group"]
        self._lag = Gauge(
            "stylestudio_consumer_group_lag",
            "Stream entries the consumer group has not read yet (Redis XINFO GROUPS lag).",
            labels,
            registry=metrics.registry,
        )
        self._pending = Gauge(
            "stylestudio_consumer_group_pending",
            "Entries a member of the group read and has not acknowledged yet (XINFO GROUPS pending).",
            labels,
            registry=metrics.registry,
        )
        self._dead = Gauge(
            "stylestudio_dead_letters",
            "Entries in the stream's dead letters (<stream>.dead): events no consumer could handle.",
            ["stream"],
            registry=metrics.registry,
        )

    async def __call__(self) -> None:
        streams = sorted({stream for stream, _ in self._groups})
        keys = [stream_key(self._prefix, stream) for stream in streams]
        # Per stream: one that does not exist (Redis emptied) must not hide the others' figures.
        groups, dead = await asyncio.gather(
            asyncio.gather(*(self._redis.xinfo_groups(key) for key in keys), return_exceptions=True),
            asyncio.gather(*(self._redis.xlen(f"{key}.dead") for key in keys), return_exceptions=True),
        )
        by_stream = {}
        for stream, info, count in zip(streams, groups, dead, strict=True):
            if not isinstance(count, BaseException):
                self._dead.labels(stream).set(count)
            if not isinstance(info, BaseException):
                by_stream[stream] = info
        for stream, group in self._groups:
            info = next((g for g in by_stream.get(stream, ()) if _text(g.get("name")) == group), None)
            if info is None:  # not created yet: the consumer creates it when it starts
                continue
            self._pending.labels(stream, group).set(int(info.get("pending") or 0))
            lag = info.get("lag")
            if lag is not None:  # unknown after some deletions: Redis says so rather than guess
                self._lag.labels(stream, group).set(int(lag))


def watch_process(
    metrics: ServiceMetrics,
    db: Database,
    redis: Redis,
    prefix: str,
    outbox: sa.Table,
    consumers: Sequence[EventConsumer],
) -> None:
    """Register the kit's figures of a service process: its pool, outbox and consumer groups."""
    metrics.register(PoolCollector(db, db.schema))
    metrics.sample(OutboxSampler(metrics, db, outbox))
    if consumers:
        metrics.sample(ConsumerGroupSampler(metrics, redis, prefix, consumers))


def loop_lag_histogram(registry: CollectorRegistry) -> Histogram:
    """The event loop's lag, in a service's registry or the gateway's."""
    return Histogram(
        "stylestudio_event_loop_lag_seconds",
        f"How much later than asked the event loop ran a timer (every {LOOP_LAG_INTERVAL_SECONDS} s).",
        buckets=LOOP_LAG_BUCKETS,
        registry=registry,
    )


async def sample_loop_lag(histogram: Histogram) -> None:
    """Forever: sleep, and record how late the loop woke us (work that did not yield in time)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LOOP_LAG_INTERVAL_SECONDS
        await asyncio.sleep(LOOP_LAG_INTERVAL_SECONDS)
        histogram.observe(max(0.0, loop.time() - asked))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
