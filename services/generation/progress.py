"""Progress streaming: the generation now, then at every status change, until terminal."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

from kit.errors import NotFound
from services.generation import store
from services.generation.lifecycle import is_terminal
from services.generation.saga import Generation, Saga


async def watch(saga: Saga, generation_id: uuid.UUID, user_id: str) -> AsyncIterator[Generation]:
    # Listen before the first read, so no change between the read and the wait is missed.
    with saga.updates.listen(generation_id) as updates:
        current = await _read(saga, generation_id, user_id)
        yield current
        while not is_terminal(current.status):
            announced = await _next_update(updates, saga.settings.watch_poll_interval_seconds)
            if announced == current.status:
                continue  # a repeated notification: nothing new to read
            latest = await _read(saga, generation_id, user_id)
            if latest.status != current.status:
                yield latest
            current = latest


async def _next_update(updates: asyncio.Queue[str], timeout: float) -> str | None:
    """The status the next notification announces, or None when the poll interval passed first."""
    try:
        async with asyncio.timeout(timeout):
            return await updates.get()
    except TimeoutError:
        return None


async def _read(saga: Saga, generation_id: uuid.UUID, user_id: str) -> Generation:
    async with saga.db.autocommit() as session:
        generation = await store.get_visible(session, generation_id, user_id)
    if generation is None:
        raise NotFound("Generation not found", details={"id": str(generation_id)})
    return generation
