"""Every service's events reach the usage log through the consumer group, once each."""

from __future__ import annotations

import asyncio
import json
import uuid

import sqlalchemy as sa

from kit.events import Event
from services.analytics.usage_log import SERVICE_ACTIONS
from stylestudio.analytics.v1 import analytics_pb2
from stylestudio.users.v1 import events_pb2 as users
from tests.analytics.conftest import Analytics, bearer
from tests.analytics.events_factory import envelope, every_action


async def _records(analytics: Analytics, user_id: str) -> list[sa.Row]:
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        result = await session.execute(
            sa.text("SELECT id, action, metadata, session_id, source FROM usage_records WHERE user_id = :u"),
            {"u": user_id},
        )
        return list(result.all())


async def _until_count(analytics: Analytics, user_id: str, count: int, timeout: float = 15.0) -> list[sa.Row]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await _records(analytics, user_id)
        if len(rows) >= count or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_every_action_arrives_once_even_when_each_event_is_delivered_twice(
    analytics: Analytics,
) -> None:
    user_id = str(uuid.uuid4())
    events = every_action(user_id)
    assert set(events) == SERVICE_ACTIONS
    for stream, event in events.values():
        await analytics.publish(stream, event)
    for stream, event in events.values():  # the relay published again (crash between XADD and DELETE)
        await analytics.publish(stream, event)

    rows = await _until_count(analytics, user_id, len(events))
    await asyncio.sleep(0.5)  # give the duplicates every chance to be (wrongly) recorded
    rows = await _records(analytics, user_id)
    assert sorted(row.action for row in rows) == sorted(events)
    assert {str(row.id) for row in rows} == {event.id for _, event in events.values()}
    by_action = {row.action: row for row in rows}
    assert by_action["login"].session_id == "s-1"
    assert by_action["generation_completed"].metadata["processingTimeMs"] == 1500
    assert by_action["generation_canceled"].metadata["previousStatus"] == "QUEUED"
    assert by_action["batch_completed"].metadata["failureCount"] == 2
    assert by_action["signup"].source == "users"
    assert by_action["signup"].metadata["signupNetwork"] == "198.51.100.0/24"
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        rolled_up, recorded = (
            await session.execute(
                sa.text("SELECT (SELECT sum(records) FROM usage_daily), (SELECT count(*) FROM usage_records)")
            )
        ).one()
    assert rolled_up == recorded, "the daily rollup counted a redelivered event twice"


async def test_no_email_reaches_the_metadata(analytics: Analytics) -> None:
    user_id = str(uuid.uuid4())
    stream, granted = every_action(user_id)["tokens_granted"]
    await analytics.publish(stream, granted)
    (row,) = await _until_count(analytics, user_id, 1)
    assert "@" not in json.dumps(row.metadata)
    assert row.metadata["reason"].startswith("welcome")


async def test_a_malformed_event_does_not_hold_back_the_rest_of_its_batch(analytics: Analytics) -> None:
    user_id = str(uuid.uuid4())
    broken = envelope("user.created", users.UserLoggedOut(user_id=user_id), user_id)  # wrong message type
    good = envelope("user.logged_in", users.UserLoggedIn(user_id=user_id, session_id="s-2"), user_id)
    await analytics.publish("events.users", broken)
    await analytics.publish("events.users", good)
    rows = await _until_count(analytics, user_id, 1)
    assert [row.action for row in rows] == ["login"]
    pending = await analytics.redis.xpending(f"{analytics.settings.redis_prefix}:events.users", "analytics")
    assert pending["pending"] == 1, "the broken event stays pending, then goes to the dead letters"


async def test_events_of_types_the_log_does_not_record_are_acknowledged_and_ignored(
    analytics: Analytics,
) -> None:
    user_id = str(uuid.uuid4())
    plan_changed = envelope("user.plan_changed", users.UserPlanChanged(user_id=user_id, plan="pro"), user_id)
    marker = envelope("user.logged_out", users.UserLoggedOut(user_id=user_id, session_id="s-3"), user_id)
    await analytics.publish("events.users", plan_changed)
    await analytics.publish("events.users", marker)
    rows = await _until_count(analytics, user_id, 1)
    assert [row.action for row in rows] == ["logout"]


async def test_the_caller_reads_ingested_records_newest_first_in_pages(analytics: Analytics) -> None:
    user_id, token = analytics.token()
    for _ in range(5):
        await analytics.publish("events.users", _login(user_id))
        await asyncio.sleep(0.002)
    await _until_count(analytics, user_id, 5)
    stub = analytics.user_stub()
    seen: list[analytics_pb2.ListUsageRecordsResponse] = []
    page_token = ""
    while True:
        page = await stub.ListUsageRecords(
            analytics_pb2.ListUsageRecordsRequest(page_size=2, page_token=page_token), metadata=bearer(token)
        )
        seen.append(page)
        page_token = page.next_page_token
        if not page_token:
            break
    records = [record for page in seen for record in page.records]
    assert [len(page.records) for page in seen] == [2, 2, 1]
    stamps = [record.created_at.ToDatetime() for record in records]
    assert stamps == sorted(stamps, reverse=True)
    assert len({record.id for record in records}) == 5


def _login(user_id: str) -> Event:
    return envelope(
        "user.logged_in", users.UserLoggedIn(user_id=user_id, session_id="s", method="google"), user_id
    )
