"""A start undone while it is still running, or after it queued: the hold goes back only for
a start that never queued, and a queued generation keeps its hold (found by bench.overload:
a start cancelled by the gateway's deadline just after it queued released the hold, and the
generation could then never be captured, nor end); a request repeated with the Idempotency-Key
of a start still running is told when to ask again."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from redis.asyncio import Redis

from kit.errors import from_rpc_error
from services.generation.faults import RESUME, checkpoint_key
from stylestudio.generation.v1 import generation_pb2
from tests.generation.conftest import Shopper, reason_of
from tests.harness import Platform


async def _new_pause(platform: Platform, step: str, before: set[bytes], timeout: float = 20.0) -> str:
    """The id of the generation that newly reached checkpoint ``step``."""
    redis = Redis.from_url(platform.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key in await _paused(redis, platform, step):
                if key not in before:
                    return key.decode().split(":")[-2]
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    raise AssertionError(f"no start reached {step}")


async def _paused(redis: Redis, platform: Platform, step: str) -> set[bytes]:
    pattern = f"{platform.redis_prefix}:generation:checkpoint:*:{step}"
    return {key async for key in redis.scan_iter(match=pattern)}


async def _keys_now(platform: Platform, step: str) -> set[bytes]:
    redis = Redis.from_url(platform.redis_url)
    try:
        return await _paused(redis, platform, step)
    finally:
        await redis.aclose()


async def test_a_start_the_sweeper_undid_answers_unavailable_and_holds_nothing(
    gen_platform: Platform,
) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    before = await _keys_now(gen_platform, "after_hold")
    start = asyncio.create_task(shopper.create([product], prompt="a belt [pause:after_hold]"))
    generation_id = await _new_pause(gen_platform, "after_hold", before)
    # Longer than start_abandoned_after_seconds (2 s here): the sweeper gives the hold back.
    deadline = time.monotonic() + 20
    while (await shopper.balance()).reserved and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await shopper.balance()).reserved == 0
    redis = Redis.from_url(gen_platform.redis_url)
    try:
        await redis.set(checkpoint_key(gen_platform.redis_prefix, generation_id, "after_hold"), RESUME)
    finally:
        await redis.aclose()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await start
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(raised.value) == "SERVICE_UNAVAILABLE"
    listed = await shopper.generation.ListGenerations(
        generation_pb2.ListGenerationsRequest(), metadata=shopper.metadata
    )
    assert list(listed.generations) == []
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)


async def test_a_key_whose_first_request_is_still_starting_is_asked_again_after_retry_after(
    gen_platform: Platform,
) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    before = await _keys_now(gen_platform, "after_hold")
    first = asyncio.create_task(shopper.create([product], prompt="a cap [pause:after_hold]", key="cap-1"))
    generation_id = await _new_pause(gen_platform, "after_hold", before)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await shopper.create([product], prompt="a cap [pause:after_hold]", key="cap-1")
    error = from_rpc_error(raised.value)
    assert (error.reason, error.retry_after_seconds) == ("CONFLICT", 1.0)
    redis = Redis.from_url(gen_platform.redis_url)
    try:
        await redis.set(checkpoint_key(gen_platform.redis_prefix, generation_id, "after_hold"), RESUME)
    finally:
        await redis.aclose()
    assert (await first).id == generation_id
    again = await shopper.create([product], prompt="a cap [pause:after_hold]", key="cap-1")
    assert again.id == generation_id
