"""Queue-depth admission: a start is refused while the queue is deeper than the workers can drain.

The depth is the number of QUEUED generations (accepted, held, waiting for a worker): the
database's count, so it includes jobs the outbox relay has not published yet and is the same
for every replica. A refusal comes before anything is counted, held or written (see
starting.py), so a refused start costs the user nothing and a retry with the same
Idempotency-Key starts the generation once. Each process reads the count at most once per
``queue_depth_refresh_seconds`` and adds its own starts meanwhile, so a burst may pass the
limit by what the other replicas accept within one refresh.
"""

from __future__ import annotations

import asyncio
import time

from kit.db import Database
from kit.errors import RateLimited
from services.generation import store
from services.generation.settings import GenerationSettings


class QueueAdmission:
    def __init__(self, db: Database, settings: GenerationSettings) -> None:
        self._db = db
        self._limit = settings.max_queued_generations
        self._refresh = settings.queue_depth_refresh_seconds
        self._retry_after = settings.queue_full_retry_after_seconds
        self._depth = 0
        self._read_at = -float("inf")
        self._reading = asyncio.Lock()

    async def check(self) -> None:
        """Raise RATE_LIMITED (with Retry-After) when the queue is full."""
        if self._limit <= 0:
            return
        depth = await self.depth()
        if depth >= self._limit:
            raise RateLimited(
                f"Too many generations are waiting to run; try again in {self._retry_after} s",
                details={"scope": "queue", "retry_after_seconds": self._retry_after},
                retry_after_seconds=self._retry_after,
            )

    def accepted(self) -> None:
        """A start of this process queued one more (counted until the next read)."""
        self._depth += 1

    async def depth(self) -> int:
        if time.monotonic() - self._read_at < self._refresh:
            return self._depth
        async with self._reading:  # concurrent starts share one read
            if time.monotonic() - self._read_at >= self._refresh:
                async with self._db.autocommit() as session:
                    self._depth = await store.queued_count(session)
                self._read_at = time.monotonic()
        return self._depth
