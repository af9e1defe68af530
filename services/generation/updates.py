"""Status-change notifications for watchers: one Redis pub/sub connection per process.

Every replica pattern-subscribes once to ``<prefix>:generation:updates:*`` and hands each
message to the local watchers of that generation (a queue each). A watcher therefore costs
a queue, not a Redis connection: a subscription per watch opened and closed a TCP
connection to Redis for every WatchGeneration call. Notifications are a hint to re-read
the generation; a watcher also re-reads on its poll interval, so a message lost while the
connection is down costs latency, never a missed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis

from kit import retry
from kit.retry import Backoff

log = logging.getLogger("stylestudio.generation.updates")


class UpdateHub:
    def __init__(self, redis: Redis, channel_prefix: str) -> None:
        self._redis = redis
        self._prefix = channel_prefix
        self._watchers: dict[str, set[asyncio.Queue[str]]] = {}

    def channel(self, generation_id: object) -> str:
        return f"{self._prefix}{generation_id}"

    @contextlib.contextmanager
    def listen(self, generation_id: object) -> Iterator[asyncio.Queue[str]]:
        """A queue of the statuses announced for ``generation_id`` while the block runs."""
        channel = self.channel(generation_id)
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._watchers.setdefault(channel, set()).add(queue)
        try:
            yield queue
        finally:
            queues = self._watchers.get(channel)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._watchers[channel]

    async def publish(self, generation_id: object, status: str) -> None:
        await self._redis.publish(self.channel(generation_id), status)

    async def run(self, poll_seconds: float = 1.0) -> None:
        """Receive notifications until cancelled, reconnecting after an outage."""
        backoff = Backoff(retry.LOOP)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(f"{self._prefix}*")
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_seconds)
                    if message is not None and message.get("type") == "pmessage":
                        self._deliver(message["channel"], message["data"])
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("update notifications interrupted", extra={"error": type(error).__name__})
                await backoff.wait()
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        queues = self._watchers.get(name)
        if not queues:
            return
        status = data.decode() if isinstance(data, bytes) else str(data)
        for queue in queues:
            queue.put_nowait(status)
