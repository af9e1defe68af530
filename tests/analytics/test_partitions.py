"""Monthly partitions: created ahead by the service, expired ones dropped by the retention."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from services.analytics import partitions
from services.analytics.partitions import Month
from services.analytics.usage_log import UsageEntry
from tests.analytics.conftest import Analytics


def test_months_wrap_around_the_year() -> None:
    assert Month(2026, 12).plus(1) == Month(2027, 1)
    assert Month(2026, 1).plus(-1) == Month(2025, 12)
    assert Month(2026, 11).partition_name == "usage_records_p202611"
    assert Month.from_partition_name("usage_records_p202611") == Month(2026, 11)
    assert Month.from_partition_name("usage_records_p202613") is None
    assert Month.from_partition_name("kit_notes") is None


def test_retention_keeps_the_current_month_and_the_ones_before_it() -> None:
    now = datetime(2026, 3, 15, tzinfo=UTC)
    existing = [Month(2025, 1), Month(2025, 2), Month(2025, 3), Month(2026, 3), Month(2026, 4)]
    assert partitions.expired(existing, now, retention_months=13) == [Month(2025, 1), Month(2025, 2)]
    assert partitions.expired(existing, now, retention_months=0) == []
    assert partitions.months_to_create(now, ahead=2) == [Month(2026, 3), Month(2026, 4), Month(2026, 5)]


async def test_the_service_creates_the_current_and_next_months_partitions(analytics: Analytics) -> None:
    current = Month.of(datetime.now(UTC))
    deadline = asyncio.get_running_loop().time() + 10
    while True:  # the maintenance loop runs in the background from start-up
        existing = await analytics.store.existing_partitions()
        if {current, current.plus(1)} <= set(existing) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert current in existing and current.plus(1) in existing


async def test_retention_drops_expired_partitions_and_keeps_the_rest(analytics: Analytics) -> None:
    store = analytics.store
    now = datetime.now(UTC)
    old = Month.of(now).plus(-20)
    await store.ensure_partitions([old])
    kept_at = now - timedelta(minutes=5)
    old_entry = UsageEntry(uuid.uuid4(), old.start + timedelta(days=1), "u-retention", "signup", "test")
    new_entry = UsageEntry(uuid.uuid4(), kept_at, "u-retention", "login", "test")
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        assert await store.record(session, [old_entry, new_entry]) == 2

    await partitions.maintain_once(store, now, ahead=2, retention_months=13)

    existing = await store.existing_partitions()
    assert old not in existing
    assert Month.of(now) in existing
    remaining = await store.list_records("u-retention", limit=10)
    assert [r.action for r in remaining] == ["login"]


async def test_a_record_for_a_month_without_partition_creates_it(analytics: Analytics) -> None:
    store = analytics.store
    future = Month.of(datetime.now(UTC)).plus(6)
    entry = UsageEntry(uuid.uuid4(), future.start + timedelta(hours=1), "u-future", "login", "test")
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        assert await store.record(session, [entry, entry]) == 1
    assert future in await store.existing_partitions()


def test_a_window_is_cut_into_whole_days_and_partial_edges() -> None:
    from services.analytics.metrics import Window, window_parts

    parts = window_parts(
        Window(datetime(2026, 3, 8, 15, 30, tzinfo=UTC), datetime(2026, 3, 15, 9, tzinfo=UTC))
    )
    assert (parts.days_from, parts.days_until) == (
        datetime(2026, 3, 9, tzinfo=UTC),
        datetime(2026, 3, 15, tzinfo=UTC),
    )
    assert parts.end == datetime(2026, 3, 15, 9, tzinfo=UTC) + timedelta(microseconds=1)
    assert (parts.first_day.isoformat(), parts.end_day.isoformat()) == ("2026-03-09", "2026-03-15")
    short = window_parts(Window(datetime(2026, 3, 15, 1, tzinfo=UTC), datetime(2026, 3, 15, 9, tzinfo=UTC)))
    assert short.days_from == short.days_until == short.end  # no whole day: the records answer it all
    aligned = window_parts(
        Window(datetime(2026, 3, 8, tzinfo=UTC), datetime(2026, 3, 10, 23, 59, tzinfo=UTC))
    )
    assert aligned.days_from == datetime(2026, 3, 8, tzinfo=UTC)
