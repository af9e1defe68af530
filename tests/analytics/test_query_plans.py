"""Over one million usage records the queries stay index scans on the partitions they need.

The plan is checked with EXPLAIN, not the time (the benchmark reports the time).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bench.analytics.seed import DAYS, GENERATE, RECORDS
from services.analytics import metrics, store
from services.analytics.partitions import Month
from tests.analytics.conftest import Analytics


async def seed_million(analytics: Analytics) -> None:
    now = datetime.now(UTC)
    first = Month.of(now - timedelta(days=DAYS + 1))
    months = [
        first.plus(n)
        for n in range((Month.of(now).year - first.year) * 12 + Month.of(now).month - first.month + 1)
    ]
    await analytics.store.ensure_partitions(months)
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        await session.execute(sa.text(GENERATE), {"records": RECORDS})
    async with analytics.service.runtime.db.engine.connect() as connection:  # type: ignore[union-attr]
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("VACUUM ANALYZE usage_records"))
    await analytics.store.rebuild_daily_rollup()
    async with analytics.service.runtime.db.engine.connect() as connection:  # type: ignore[union-attr]
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("VACUUM ANALYZE usage_daily"))


@pytest.fixture(scope="module")
async def million(analytics: Analytics) -> Analytics:
    started = time.monotonic()
    await seed_million(analytics)
    print(f"seeded {RECORDS} records in {time.monotonic() - started:.1f}s")
    return analytics


def _scanned_partitions(plan: str) -> set[str]:
    return set(re.findall(r"on (usage_records_p\d{6})", plan))


def _window_months(days: int) -> set[str]:
    now = datetime.now(UTC)
    first, last = Month.of(now - timedelta(days=days)), Month.of(now)
    months, month = set(), first
    while month <= last:
        months.add(month.partition_name)
        month = month.plus(1)
    return months


async def test_a_users_metrics_use_the_users_index_on_the_windows_partitions(million: Analytics) -> None:
    window = metrics.Window(datetime.now(UTC) - timedelta(days=7), datetime.now(UTC))
    plan = await million.store.explain(
        store.METRICS_SQL,
        {
            "user_id": "user-42",
            "since": window.since,
            "until": window.until,
            "started": "generation_started",
            "completed": "generation_completed",
            "failed": "generation_failed",
        },
    )
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan, plan
    assert _scanned_partitions(plan) <= _window_months(7), plan


async def test_a_users_usage_history_page_is_an_index_scan(million: Analytics) -> None:
    plan = await million.store.explain(
        "SELECT id, action, metadata, session_id, created_at FROM usage_records WHERE user_id = :u"
        " ORDER BY created_at DESC, id DESC LIMIT 21",
        {"u": "user-42"},
    )
    assert "Seq Scan" not in plan and "Index" in plan, plan


@pytest.mark.parametrize("days", [7, 30])
async def test_system_analytics_read_whole_days_from_the_rollup_and_only_the_edges_from_the_records(
    million: Analytics, days: int
) -> None:
    now = datetime.now(UTC)
    window = metrics.Window(now - timedelta(days=days), now)
    plan = await million.store.explain(
        store.SYSTEM_SQL, {"actions": list(metrics.SYSTEM_ACTIONS), **store.rollup_params(window)}
    )
    # The records are read only for the window's first and last (partial) days.
    edges = {Month.of(window.since).partition_name, Month.of(now).partition_name}
    scanned = _scanned_partitions(plan)
    assert scanned and scanned <= edges, plan
    assert not re.search(r"Seq Scan on usage_records_p", plan), plan
    assert "usage_daily" in plan, plan


async def test_sign_ups_per_network_read_only_the_windows_sign_ups_through_the_index(
    million: Analytics,
) -> None:
    now = datetime.now(UTC)
    plan = await million.store.explain(
        store.SIGNUP_NETWORKS_SQL,
        {
            "key": "signupNetwork",
            "action": "signup",
            "since": now - timedelta(days=7),
            "until": now,
            "top": 10,
        },
    )
    assert "Seq Scan" not in plan and "Index" in plan, plan
    assert _scanned_partitions(plan) <= _window_months(7), plan


async def test_the_rollup_answers_what_the_records_answer(million: Analytics) -> None:
    """Over the million records, the rollup-based analytics equal a direct count of the records."""
    now = datetime.now(UTC)
    window = metrics.Window(now - timedelta(days=30), now)
    from_rollup = await million.store.grouped_counts(window, metrics.SYSTEM_ACTIONS)
    async with million.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        rows = (
            await session.execute(
                sa.text(store.GROUPED_SQL.format(user_filter="")),
                {"actions": list(metrics.SYSTEM_ACTIONS), "since": window.since, "until": window.until},
            )
        ).all()
    from_records = [grouped for row in rows if (grouped := store.grouped_count(row)) is not None]
    key = lambda g: (g.action, str(g.day), str(g.model), str(g.style), str(g.reason))  # noqa: E731
    assert sorted(from_rollup, key=key) == sorted(from_records, key=key)
