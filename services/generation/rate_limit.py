"""The hourly generation limit per plan: a sliding window in Redis, shared by every replica."""

from __future__ import annotations

import datetime as dt

from redis.asyncio import Redis

from kit.errors import RateLimited
from kit.ratelimits import Allowance

# Drop what left the window, count, and admit (recording the member) only under the
# limit; else say when enough entries leave for one more. Redis' clock, so replicas agree.
# Returns {now_ms, -1} when admitted, else {now_ms, wait_ms}.
_ADMIT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window_ms)
  return {now_ms, -1}
end
local entry = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
if entry[2] == nil then
  return {now_ms, window_ms}
end
return {now_ms, tonumber(entry[2]) + window_ms - now_ms}
"""

# The same count without recording anything: {now_ms, count, wait_ms} (wait 0 under the limit).
_STATUS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local since = '(' .. (now_ms - window_ms)
local count = redis.call('ZCOUNT', KEYS[1], since, '+inf')
if count < limit then
  return {now_ms, count, 0}
end
local entry = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', count - limit, 1)
if entry[2] == nil then
  return {now_ms, count, window_ms}
end
return {now_ms, count, tonumber(entry[2]) + window_ms - now_ms}
"""


class HourlyLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: dict[str, int], window_seconds: int) -> None:
        self._redis, self._prefix = redis, prefix
        self._limits, self._window_ms = limits, window_seconds * 1000
        self._admit = redis.register_script(_ADMIT)
        self._status = redis.register_script(_STATUS)

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:generation:hourly:{user_id}"

    def limit_for(self, plan: str) -> int:
        return self._limits.get(plan, self._limits.get("free", 0))

    async def admit(self, user_id: str, plan: str, generation_id: str) -> None:
        """Count one generation, or raise RATE_LIMITED with the seconds until a slot frees up."""
        limit = self.limit_for(plan)
        _, wait_ms = await self._admit(
            keys=[self._key(user_id)], args=[self._window_ms, limit, generation_id]
        )
        if int(wait_ms) >= 0:
            retry_after = _seconds(int(wait_ms))
            raise RateLimited(
                f"Hourly generation limit of the {plan or 'free'} plan reached ({limit}); "
                f"try again in {retry_after} s",
                details={"limit": limit, "plan": plan, "retry_after_seconds": retry_after},
                retry_after_seconds=retry_after,
            )

    async def allowance(self, user_id: str, plan: str) -> Allowance:
        """The plan's limit, what is left of it now and when the next generation may start."""
        limit = self.limit_for(plan)
        now_ms, count, wait_ms = (
            int(value)
            for value in await self._status(keys=[self._key(user_id)], args=[self._window_ms, limit])
        )
        remaining = max(0, limit - count)
        reset = 0 if remaining else _seconds(wait_ms)
        next_at = dt.datetime.fromtimestamp((now_ms + (wait_ms if not remaining else 0)) / 1000, dt.UTC)
        return Allowance(limit, remaining, reset, next_at)

    async def give_back(self, user_id: str, generation_id: str) -> None:
        """A generation that did not start does not count."""
        await self._redis.zrem(self._key(user_id), generation_id)


def _seconds(wait_ms: int) -> int:
    """Whole seconds, rounded up, at least 1: asking sooner would be refused."""
    return max(1, -(-wait_ms // 1000))
