"""Watchers share one Redis pub/sub connection per process, and it survives a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.generation.updates import UpdateHub


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def pubsub_client_ids(redis: Redis) -> set[int]:
    return {int(client["id"]) for client in await redis.client_list() if int(client.get("psub", 0))}


async def _until(check: object, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_fifty_watchers_get_their_own_updates_over_one_subscription(redis: Redis) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:generation:updates:"
    hub = UpdateHub(redis, prefix)
    before = await pubsub_client_ids(redis)
    runner = asyncio.create_task(hub.run(poll_seconds=0.1))
    try:
        await _until(lambda: _grew(redis, before))
        ids = [uuid.uuid4() for _ in range(50)]
        with contextlib.ExitStack() as listening:
            queues = [listening.enter_context(hub.listen(generation_id)) for generation_id in ids]
            for index, generation_id in enumerate(ids):
                await hub.publish(generation_id, f"STATUS-{index}")
            received = [await asyncio.wait_for(queue.get(), 5) for queue in queues]
            assert received == [f"STATUS-{index}" for index in range(50)]
            # One pattern subscription for all of them, no per-watcher channel subscriptions.
            assert len(await pubsub_client_ids(redis) - before) == 1
            assert all(count == 0 for _, count in await redis.pubsub_numsub(*[hub.channel(i) for i in ids]))
        # Nobody listens any more: a notification is dropped, not queued anywhere.
        await hub.publish(ids[0], "LATE")
        assert hub._watchers == {}
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_the_hub_resubscribes_after_its_connection_is_killed(redis: Redis) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}:generation:updates:"
    hub = UpdateHub(redis, prefix)
    before = await pubsub_client_ids(redis)
    runner = asyncio.create_task(hub.run(poll_seconds=0.1))
    try:
        await _until(lambda: _grew(redis, before))
        (hub_client,) = await pubsub_client_ids(redis) - before
        await redis.execute_command("CLIENT", "KILL", "ID", str(hub_client))
        generation_id = uuid.uuid4()
        with hub.listen(generation_id) as queue:

            async def delivered() -> bool:
                await hub.publish(generation_id, "PROCESSING")
                return not queue.empty()

            await _until(delivered)
            assert await queue.get() == "PROCESSING"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def _grew(redis: Redis, before: set[int]) -> bool:
    return len(await pubsub_client_ids(redis) - before) == 1
