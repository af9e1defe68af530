"""The hourly generation limit per plan: a sliding window in Redis, shared by every replica."""

from __future__ import annotations

from redis.asyncio import Redis

from kit.errors import RateLimited

# Drop what left the window, count, and admit (recording the member) only under the
# limit; else say when the oldest entry leaves. Redis' clock, so replicas agree.
_ADMIT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window_ms = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - window_ms)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window_ms)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window_ms - now_ms
"""


class HourlyLimiter:
    def __init__(self, redis: Redis, prefix: str, limits: dict[str, int], window_seconds: int) -> None:
        self._redis, self._prefix = redis, prefix
        self._limits, self._window_ms = limits, window_seconds * 1000
        self._admit = redis.register_script(_ADMIT)

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:generation:hourly:{user_id}"

    def limit_for(self, plan: str) -> int:
        return self._limits.get(plan, self._limits.get("free", 0))

    async def admit(self, user_id: str, plan: str, generation_id: str) -> None:
        """Count one generation, or raise RATE_LIMITED with the seconds until a slot frees up."""
        limit = self.limit_for(plan)
        wait_ms = int(
            await self._admit(keys=[self._key(user_id)], args=[self._window_ms, limit, generation_id])
        )
        if wait_ms >= 0:
            retry_after = max(1, -(-wait_ms // 1000))
            raise RateLimited(
                f"Hourly generation limit of the {plan or 'free'} plan reached ({limit}); "
                f"try again in {retry_after} s",
                details={"limit": limit, "plan": plan, "retry_after_seconds": retry_after},
                retry_after_seconds=retry_after,
            )

    async def give_back(self, user_id: str, generation_id: str) -> None:
        """A generation that did not start does not count."""
        await self._redis.zrem(self._key(user_id), generation_id)
