"""Typed reads of Redis Streams for tests (redis-py types stream replies loosely)."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

StreamEntry = tuple[bytes, dict[bytes, bytes]]


async def stream_entries(redis: Redis, key: str) -> list[StreamEntry]:
    """Every entry of the stream ``key``, oldest first: (message id, fields)."""
    return cast(list[StreamEntry], await redis.xrange(key))


async def append_entry(redis: Redis, key: str, fields: dict[bytes, bytes]) -> bytes:
    """XADD ``fields`` as they are (a redelivery of an entry read with ``stream_entries``)."""
    return cast(bytes, await redis.xadd(key, cast(dict[Any, Any], fields)))


async def consumed_up_to(redis: Redis, stream: str, entry_id: bytes, group_name: bytes) -> bool:
    """The consumer group ``group_name`` has read and acknowledged everything of ``stream`` up to
    ``entry_id``."""
    for group in await redis.xinfo_groups(stream):
        if group["name"] == group_name:
            last = tuple(int(part) for part in group["last-delivered-id"].split(b"-"))
            return last >= tuple(int(part) for part in entry_id.split(b"-")) and group["pending"] == 0
    return False
