"""Brute-force protection: failed logins counted per account and per IP address in Redis.

Once an account (or an address) has failed ``max`` times within the window, further
attempts are refused with RATE_LIMITED and a Retry-After until the window ends, before
the password is even looked at, so a guesser learns nothing from the answer.
A successful login clears the account's counter, not the address's.
"""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from kit.errors import RateLimited
from services.users.settings import UsersSettings


class LoginThrottle:
    def __init__(self, redis: Redis, settings: UsersSettings) -> None:
        self._redis = redis
        self._window = settings.login_failure_window_seconds
        self._limits = {
            "account": settings.login_max_failures_per_account,
            "ip": settings.login_max_failures_per_ip,
        }
        self._prefix = f"{settings.redis_prefix}:users:login-failures"

    def _keys(self, email: str, ip: str) -> dict[str, str]:
        # Hashed: no email address is ever written to Redis.
        account = hashlib.sha256(email.encode()).hexdigest()
        keys = {"account": f"{self._prefix}:account:{account}"}
        if ip:
            keys["ip"] = f"{self._prefix}:ip:{ip}"
        return keys

    async def check(self, email: str, ip: str) -> None:
        """Raise RateLimited if this account or this address is locked out."""
        keys = self._keys(email, ip)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.get(key)
                pipe.pttl(key)
            answers = await pipe.execute()
        for index, scope in enumerate(keys):
            count, ttl_ms = answers[2 * index], answers[2 * index + 1]
            if count is not None and int(count) >= self._limits[scope]:
                retry_after = max(1, -(-int(ttl_ms) // 1000)) if ttl_ms and ttl_ms > 0 else self._window
                raise RateLimited(
                    "Too many failed sign-in attempts; try again later",
                    details={"scope": scope, "retry_after_seconds": retry_after},
                    retry_after_seconds=retry_after,
                )

    async def record_failure(self, email: str, ip: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in self._keys(email, ip).values():
                pipe.incr(key)
                # The window starts at the first failure and is not extended by later ones.
                pipe.expire(key, self._window, nx=True)
            await pipe.execute()

    async def record_success(self, email: str) -> None:
        await self._redis.delete(self._keys(email, "")["account"])
