"""user.created grants the welcome tokens exactly once per user."""

from __future__ import annotations

import asyncio
import uuid

import grpc

from kit.events import Event
from stylestudio.billing.v1 import billing_pb2
from stylestudio.users.v1 import events_pb2 as users_events_pb2
from tests.billing.conftest import bearer, start_billing, stop_billing


def user_created(user_id: str, event_id: str | None = None) -> Event:
    event = Event(id=event_id or str(uuid.uuid4()), type="user.created", source="users", user_id=user_id)
    event.occurred_at.GetCurrentTime()
    event.data.Pack(users_events_pb2.UserCreated(user_id=user_id, plan="free", signup_method="password"))
    return event


async def balance_of(internal, user_id: str) -> int:  # type: ignore[no-untyped-def]
    summary = await internal.GetUserBillingSummary(billing_pb2.GetUserBillingSummaryRequest(user_id=user_id))
    return summary.balance


async def test_user_created_delivered_twice_grants_the_welcome_tokens_once(billing, internal) -> None:
    user_id = str(uuid.uuid4())
    event = user_created(user_id)
    await billing.publish("events.users", event)
    await billing.publish("events.users", event)  # the same event redelivered
    await billing.publish("events.users", user_created(user_id))  # re-published under a new event id
    for _ in range(100):
        if await balance_of(internal, user_id) >= billing.settings.welcome_grant_tokens:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # let every copy be handled
    assert await balance_of(internal, user_id) == billing.settings.welcome_grant_tokens == 10

    granted = []
    for _ in range(50):
        granted = [
            e
            for e in await billing.stream("events.billing")
            if e.type == "billing.tokens_granted" and e.user_id == user_id
        ]
        if granted:
            break
        await asyncio.sleep(0.1)
    assert len(granted) == 1


async def test_without_a_welcome_grant_user_created_still_opens_the_wallet_admins_grant_to(
    infrastructure, redis_url
) -> None:
    billing = await start_billing(infrastructure, redis_url, welcome_grant_tokens=0)
    try:
        user_id = str(uuid.uuid4())
        await billing.publish("events.users", user_created(user_id))
        _, admin = billing.token(role="admin")
        request = billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=3, reason="support")
        for _ in range(100):
            try:
                granted = await billing.user_stub().AdminGrantTokens(
                    request, metadata=(*bearer(admin), ("idempotency-key", f"k-{user_id}"))
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND  # until the consumer has run
                await asyncio.sleep(0.05)
            else:
                assert granted.balance == 3
                return
        raise AssertionError("the wallet was never opened")
    finally:
        await stop_billing(billing)
