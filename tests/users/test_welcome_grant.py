"""End to end with billing: a new user gets the welcome grant exactly once, even when the
user.created event is delivered twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.users.v1 import auth_pb2_grpc
from tests.harness import Platform
from tests.harness.streams import append_entry, consumed_up_to, stream_entries
from tests.users.conftest import signup

WELCOME_TOKENS = 10  # billing's default, API.md's "10 by default"


@pytest.fixture(scope="module")
async def billing(users_platform: Platform) -> AsyncIterator[billing_pb2_grpc.BillingServiceStub]:
    users_platform.start("billing")
    try:
        await users_platform.wait_serving("billing")
        yield users_platform.stub("billing", billing_pb2_grpc.BillingServiceStub)
    finally:
        users_platform.stop("billing")


async def _balance(billing: billing_pb2_grpc.BillingServiceStub, user_id: str) -> int:
    request = billing_pb2.GetUserBillingSummaryRequest(user_id=user_id)
    return (await billing.GetUserBillingSummary(request)).balance


async def test_a_new_user_gets_the_welcome_grant_exactly_once_even_if_user_created_is_redelivered(
    users_platform: Platform,
    auth: auth_pb2_grpc.AuthServiceStub,
    billing: billing_pb2_grpc.BillingServiceStub,
) -> None:
    user_id = (await signup(auth)).user.id
    deadline = time.monotonic() + 15
    while await _balance(billing, user_id) < WELCOME_TOKENS:
        assert time.monotonic() < deadline, "the welcome grant never arrived"
        await asyncio.sleep(0.1)

    stream = f"{users_platform.redis_prefix}:events.users"
    redis = Redis.from_url(users_platform.redis_url)
    try:
        entries = await stream_entries(redis, stream)
        (fields,) = [
            f for _, f in entries if f[b"type"] == b"user.created" and user_id.encode() in f[b"event"]
        ]
        redelivered = await append_entry(redis, stream, fields)  # the very same envelope, a second time
        while not await consumed_up_to(redis, stream, redelivered, b"billing"):
            assert time.monotonic() < deadline + 15, "billing never read the redelivered event"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    assert await _balance(billing, user_id) == WELCOME_TOKENS
