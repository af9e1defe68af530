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
