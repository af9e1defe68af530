"""Analytics benchmark: ``.venv/bin/python -m bench.analytics [--events N] [--runs N]``.

1. Ingestion: N real event envelopes XADDed to the four streams, then drained by the
   service's own batch consumer (kit batch mode + UsageIngest); prints events/s.
2. Queries: one million records generated in SQL, then the metrics, usage-history and
   system-analytics queries run repeatedly; prints their median and p95 latency.

It creates a database of its own (from STYLESTUDIO_DATABASE_URL, the admin URL) and a
Redis prefix of its own, and drops both at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from bench.analytics.seed import DAYS, GENERATE, RECORDS
from kit.bootstrap import ProvisioningSettings, provision_sync
from kit.db import Database
from kit.events import Event, EventConsumer, stream_key
from services.analytics import metrics, models, usage_log
from services.analytics.events import UsageIngest
from services.analytics.partitions import Month
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import UsageStore
from stylestudio.generation.v1 import events_pb2 as generation_events
from stylestudio.users.v1 import events_pb2 as users_events


def _event(index: int) -> tuple[str, Event]:
    user_id = f"bench-user-{index % 1000}"
    if index % 2:
        stream, event_type = "events.users", "user.logged_in"
        data = users_events.UserLoggedIn(user_id=user_id, session_id=f"s-{index}", method="password")
    else:
        stream, event_type = "events.generation", "generation.completed"
        data = generation_events.GenerationCompleted(
            user_id=user_id, generation_id=str(uuid.uuid4()), processing_time_ms=1200, token_cost=2,
            model="dall-e-3", style="studio",
        )  # fmt: skip
    event = Event(id=str(uuid.uuid4()), type=event_type, source=stream.split(".")[1], user_id=user_id)
    event.occurred_at.GetCurrentTime()
    event.data.Pack(data)
    return stream, event


async def bench_ingestion(db: Database, redis: Redis, settings: AnalyticsSettings, count: int) -> float:
    prefix = settings.redis_prefix
    async with redis.pipeline(transaction=False) as pipe:
        for index in range(count):
            stream, event = _event(index)
            pipe.xadd(
                stream_key(prefix, stream),
                {"id": event.id, "type": event.type, "event": event.SerializeToString()},
            )
        await pipe.execute()
    store = UsageStore(db)
    consumer = EventConsumer(
        db, redis, models.inbox, prefix=prefix, group="analytics", batch_size=settings.ingest_batch_size
    )
    ingest = UsageIngest(store, settings)
    for stream, actions in usage_log.EVENT_ACTIONS.items():
        consumer.on_batch(stream, actions.keys(), ingest.record_events, inbox=False)
    await consumer.ensure_groups()
    for key in consumer.streams:
        await redis.xgroup_setid(key, "analytics", id="0")
    await store.ensure_partitions([Month.of(datetime.now(UTC))])
    started = time.perf_counter()
    handled = 0
    while handled < count:
        handled += await consumer.consume_once(block_ms=100)
    elapsed = time.perf_counter() - started
    async with db.transaction() as session:
        recorded = await session.scalar(sa.text("SELECT count(*) FROM usage_records"))
    assert recorded == count, f"{recorded} records for {count} events"
    return count / elapsed


async def _timed(runs: int, query: object) -> tuple[float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await query()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


async def bench_queries(db: Database, runs: int) -> dict[str, tuple[float, float]]:
    store = UsageStore(db)
    now = datetime.now(UTC)
    first = Month.of(now - timedelta(days=DAYS + 1))
    await store.ensure_partitions([first.plus(n) for n in range(5) if first.plus(n) <= Month.of(now)])
    async with db.transaction() as session:
        await session.execute(sa.text("TRUNCATE usage_records, usage_daily"))
        await session.execute(sa.text(GENERATE), {"records": RECORDS})
    async with db.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("VACUUM ANALYZE usage_records"))
    await store.rebuild_daily_rollup()  # the seed went around the write path that keeps it
    async with db.engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("VACUUM ANALYZE usage_daily"))

    def window(days: int) -> metrics.Window:
        moment = datetime.now(UTC)
        return metrics.Window(moment - timedelta(days=days), moment)

    users = iter(f"user-{n}" for n in range(10**9))
    return {
        "metrics (one user, 7d)": await _timed(
            runs, lambda: store.generation_metrics(next(users), window(7))
        ),
        "usage history page (one user)": await _timed(
            runs, lambda: store.list_records(next(users), limit=21)
        ),
        "activity summary counts (one user)": await _timed(runs, lambda: store.action_counts(next(users))),
        "system analytics (7d)": await _timed(
            runs, lambda: store.grouped_counts(window(7), metrics.SYSTEM_ACTIONS)
        ),
        "system analytics (30d)": await _timed(
            runs, lambda: store.grouped_counts(window(30), metrics.SYSTEM_ACTIONS)
        ),
        "system analytics (90d)": await _timed(
            runs, lambda: store.grouped_counts(window(90), metrics.SYSTEM_ACTIONS)
        ),
        "enterprise analytics (one user, 30d)": await _timed(
            runs, lambda: store.grouped_counts(window(30), metrics.SYSTEM_ACTIONS, next(users))
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, help="events per batch (default: INGEST_BATCH_SIZE)")
    parser.add_argument(
        "--ingest-only", action="store_true", help="skip the queries over one million records"
    )
    args = parser.parse_args()
    base = AnalyticsSettings()
    name = f"stylestudio_bench_{uuid.uuid4().hex[:8]}"
    admin = make_url(base.database_url)
    maintenance = admin.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(maintenance, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        urls = provision_sync(
            admin.set(database=name).render_as_string(hide_password=False),
            ["analytics"],
            settings=ProvisioningSettings(environment="development"),
        )
        overrides = {"ingest_batch_size": args.batch_size} if args.batch_size else {}
        settings = AnalyticsSettings(redis_prefix=f"bench-analytics-{uuid.uuid4().hex[:8]}", **overrides)
        db = Database(urls["analytics"], "analytics", pool_size=4)
        redis = Redis.from_url(settings.redis_url)
        try:
            rate = await bench_ingestion(db, redis, settings, args.events)
            print(
                f"ingestion: {args.events} events through the stream consumer"
                f" (batches of {settings.ingest_batch_size}): {rate:,.0f} events/s"
            )
            if args.ingest_only:
                return
            print(f"queries over {RECORDS:,} records ({DAYS} days, 10,000 users), {args.runs} runs each:")
            for label, (median, p95) in (await bench_queries(db, args.runs)).items():
                print(f"  {label:40s} median {median:7.1f} ms   p95 {p95:7.1f} ms")
        finally:
            async for key in redis.scan_iter(match=f"{settings.redis_prefix}:*"):
                await redis.delete(key)
            await redis.aclose()
            await db.dispose()
    finally:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
