"""Progress streaming: the generation now, then at every status change, until terminal."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from redis.asyncio.client import PubSub

from kit.errors import NotFound
from services.generation import store
from services.generation.lifecycle import is_terminal
from services.generation.saga import Generation, Saga


async def watch(saga: Saga, generation_id: uuid.UUID, user_id: str) -> AsyncIterator[Generation]:
    pubsub = saga.redis.pubsub()
    # Subscribe before the first read, so no change between the read and the wait is missed.
    await pubsub.subscribe(saga.updates_channel(generation_id))
    try:
        current = await _read(saga, generation_id, user_id)
        yield current
        while not is_terminal(current.status):
            announced = await _next_update(pubsub, saga.settings.watch_poll_interval_seconds)
            if announced == current.status:
                continue  # a repeated notification: nothing new to read
            latest = await _read(saga, generation_id, user_id)
            if latest.status != current.status:
                yield latest
            current = latest
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()


async def _next_update(pubsub: PubSub, timeout: float) -> str | None:
    """The status a notification announces, or None when the poll interval passed without one.

    get_message answers None at once for the subscription's confirmation, which must not
    count as a wake-up (it cost every watch an extra read).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None and message.get("type") == "message":
            data = message["data"]
            return data.decode() if isinstance(data, bytes) else str(data)
    return None


async def _read(saga: Saga, generation_id: uuid.UUID, user_id: str) -> Generation:
    async with saga.db.transaction() as session:
        generation = await store.get_visible(session, generation_id, user_id)
    if generation is None:
        raise NotFound("Generation not found", details={"id": str(generation_id)})
    return generation
