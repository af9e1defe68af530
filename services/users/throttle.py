"""Brute-force protection and the sign-up limit, kept in Redis (policy: docs/users.md, "Brute force").

A password sign-in reserves one failure from its budgets, atomically (one Lua script), before
the password is looked at; a correct password gives the unit back, a wrong one leaves it spent.
So N concurrent guesses cannot all be checked before the first failure counts: at most the free
failures are checked, the others are refused.

- Per account (its email, hashed): the first ``login_free_failures`` failures cost nothing;
  from then on the next attempt must wait a delay after the last one, doubling from
  ``login_delay_base_seconds`` up to ``login_delay_max_seconds``. There is no hard lock: a
  victim of someone else's guessing waits at most the cap. A refused attempt costs nothing.
- Per known device: a client (address and user agent) that signed in to the account in the
  last ``login_known_device_days`` is not held up by the account's delay; it has one of its
  own, by the same rules, and is not counted against its address either.
- Per address (an IPv4 address, an IPv6 /64): ``login_max_failures_per_address`` failures per
  window over all accounts, then refused until the window ends.

Every refusal is RATE_LIMITED with a Retry-After. No email or address is written to Redis, only
their SHA-256. For the audit log, a reservation tells the delay a failure would start, and a
refusal whether it is the first of its wait (one ``auth.login_throttled`` per wait, however
many attempts a guesser makes during it).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from redis.asyncio import Redis

from kit.errors import RateLimited
from services.users.origins import limit_unit
from services.users.settings import UsersSettings

# KEYS: known-device mark, device budget, account budget, address budget.
# ARGV: free failures, base delay ms, max delay ms, window ms, address limit, count address (0/1).
# Returns {1, known, address counted, delay ms a failure starts} when a unit was reserved,
# {0, wait ms, scope, first refusal of this wait (0/1)} when refused.
_RESERVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local free, base, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local window, address_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local known = redis.call('EXISTS', KEYS[1]) == 1
local budget, scope = KEYS[3], 'account'
if known then budget, scope = KEYS[2], 'device' end
local count_address = (not known) and ARGV[6] == '1'
local wait = 0
local not_before = tonumber(redis.call('HGET', budget, 'not_before') or '0')
if not_before > now then wait = not_before - now end
if count_address then
  local used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= address_limit then
    local ttl = redis.call('PTTL', KEYS[4])
    if ttl < 0 then ttl = window end
    if ttl > wait then wait, scope = ttl, 'address' end
  end
end
if wait > 0 then
  local refused = budget
  if scope == 'address' then refused = KEYS[4] end
  local first = redis.call('SET', refused .. ':refused', '1', 'PX', wait, 'NX') and 1 or 0
  return {0, wait, scope, first}
end
local failures = redis.call('HINCRBY', budget, 'failures', 1)
local delay = 0
if failures >= free then delay = math.floor(math.min(cap, base * 2 ^ (failures - free))) end
redis.call('HSET', budget, 'not_before', now + delay)
redis.call('PEXPIRE', budget, math.max(window, delay))
if count_address then
  redis.call('INCR', KEYS[4])
  if redis.call('PTTL', KEYS[4]) < 0 then redis.call('PEXPIRE', KEYS[4], window) end
end
return {1, known and 1 or 0, count_address and 1 or 0, delay}
"""

# KEYS: the budget reserved from, the address budget, the known-device mark.
# ARGV: address counted (0/1), remember the device (0/1), how long in ms.
_GIVE_BACK = """
if redis.call('HINCRBY', KEYS[1], 'failures', -1) <= 0 then redis.call('DEL', KEYS[1]) end
if ARGV[1] == '1' and redis.call('DECR', KEYS[2]) <= 0 then redis.call('DEL', KEYS[2]) end
if ARGV[2] == '1' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[3]) end
return 1
"""


def delay_after(failures: int, *, free: int, base: float, cap: float) -> float:
    """Seconds the next attempt waits after ``failures`` failures (what the script computes)."""
    return 0.0 if failures < free else min(cap, base * 2 ** (failures - free))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _retry_after(wait_ms: int) -> int:
    return max(1, math.ceil(wait_ms / 1000))


@dataclass(frozen=True)
class _Keys:
    known: str
    device: str
    account: str
    address: str


@dataclass(frozen=True)
class Reservation:
    """The failure unit a sign-in holds while its password is checked."""

    keys: _Keys
    known_device: bool
    address_counted: bool
    # Seconds the next attempt waits if this one turns out to be a failure.
    delay_if_failed: float = 0.0

    @property
    def scope(self) -> str:
        return "device" if self.known_device else "account"


class SignInThrottled(RateLimited):
    """A sign-in refused by brute-force protection; ``first``: the first refusal of this wait."""

    def __init__(self, scope: str, retry_after: int, first: bool) -> None:
        super().__init__(
            "Too many failed sign-in attempts; try again later",
            details={"scope": scope, "retry_after_seconds": retry_after},
            retry_after_seconds=retry_after,
        )
        self.scope, self.retry_after, self.first = scope, retry_after, first


class LoginThrottle:
    def __init__(self, redis: Redis, settings: UsersSettings) -> None:
        self._redis = redis
        self._reserve = redis.register_script(_RESERVE)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._prefix = f"{settings.redis_prefix}:users:sign-in"
        self._known_ms = int(settings.login_known_device_days * 86_400_000)
        self._address_limit = settings.login_max_failures_per_address
        self._policy = [
            settings.login_free_failures,
            int(settings.login_delay_base_seconds * 1000),
            int(settings.login_delay_max_seconds * 1000),
            settings.login_failure_window_seconds * 1000,
            self._address_limit,
        ]

    def _keys(self, email: str, ip: str, user_agent: str) -> _Keys:
        account, unit = _digest(email), limit_unit(ip)
        device = _digest(email, unit, user_agent)
        return _Keys(
            known=f"{self._prefix}:known:{device}",
            device=f"{self._prefix}:device:{device}",
            account=f"{self._prefix}:account:{account}",
            address=f"{self._prefix}:address:{_digest(unit)}" if unit else f"{self._prefix}:address:",
        )

    async def reserve(self, email: str, ip: str, user_agent: str) -> Reservation:
        """One failure's worth of every budget this attempt answers to, or SignInThrottled."""
        keys = self._keys(email, ip, user_agent)
        count_address = self._address_limit > 0 and limit_unit(ip) != ""
        answer = await self._reserve(
            keys=[keys.known, keys.device, keys.account, keys.address],
            args=[*self._policy, int(count_address)],
        )
        if int(answer[0]) == 0:
            retry_after = _retry_after(int(answer[1]))
            scope = answer[2].decode() if isinstance(answer[2], bytes) else str(answer[2])
            raise SignInThrottled(scope, retry_after, first=bool(int(answer[3])))
        return Reservation(
            keys,
            known_device=bool(int(answer[1])),
            address_counted=bool(int(answer[2])),
            delay_if_failed=int(answer[3]) / 1000,
        )

    async def give_back(self, reservation: Reservation, *, signed_in: bool) -> None:
        """The attempt was not a wrong password: its unit returns. ``signed_in``: it was the
        right one, so this client becomes a known device of the account."""
        keys = reservation.keys
        await self._give_back(
            keys=[keys.device if reservation.known_device else keys.account, keys.address, keys.known],
            args=[int(reservation.address_counted), int(signed_in and self._known_ms > 0), self._known_ms],
        )

    async def remember_device(self, email: str, ip: str, user_agent: str) -> None:
        """This client signed in to this account some other way (sign-up, OAuth)."""
        if self._known_ms > 0:
            await self._redis.set(self._keys(email, ip, user_agent).known, b"1", px=self._known_ms)


class SignupLimit:
    """At most ``signup_limit`` new accounts per address (IPv4, IPv6 /64) per window."""

    def __init__(self, redis: Redis, settings: UsersSettings) -> None:
        self._redis = redis
        self._limit = settings.signup_limit
        self._window = settings.signup_window_seconds
        self._prefix = f"{settings.redis_prefix}:users:sign-ups"

    async def count(self, ip: str) -> None:
        """Count one sign-up from ``ip``, or refuse it with RATE_LIMITED past the limit."""
        unit = limit_unit(ip)
        if self._limit <= 0 or not unit:
            return
        key = f"{self._prefix}:{_digest(unit)}"
        async with self._redis.pipeline(transaction=True) as pipe:
            # The window starts at the first sign-up and is not extended by later ones (INCR
            # keeps the TTL). Not EXPIRE's NX option: Redis 7 only, and the embedded server
            # `make run` falls back to is 6.2.
            pipe.set(key, 0, ex=self._window, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, ttl_ms = await pipe.execute()
        if int(count) > self._limit:
            retry_after = _retry_after(int(ttl_ms)) if int(ttl_ms) > 0 else self._window
            raise RateLimited(
                "Too many new accounts from this address; try again later",
                details={"scope": "address", "retry_after_seconds": retry_after},
                retry_after_seconds=retry_after,
            )
