"""What is true of a user's credentials right now, for every service to check on every call.

An access token says who the user is and, until it expires (15 minutes), what their role
and plan were at sign-in. What the platform honours is what is true *now*: the users
service keeps, per user, a small state in Redis, written in the same code path as each
change (role, plan, an ended session, a deleted API key) and before that change's call
returns:

    {prefix}:credentials:{user_id}  ->  hash {"v": version, "state": JSON}

``version`` is the user's ``credentials_version`` in the users database, bumped in the
transaction of every change; a write never replaces a newer version, so a rebuild that
read the database just before a change cannot bring back what the change undid.

Every process reads the state after verifying a token (``CredentialStates.current``),
keeping it in memory for well under a second (``credential_state_cache_seconds``, 0.5 s)
so the hot path costs one dict lookup most of the time. The Caller of the call then
carries the current role and plan, not the token's; a token of an ended session, or of
an account that no longer exists, is refused.

Redis is a copy, never the only truth: a missing state (expired, or Redis lost its
data) is rebuilt by the users service from its database, not taken as "all fine"; when
Redis cannot be reached the users service is asked directly. Only when neither answers
is the call refused (UNAVAILABLE): a revocation that cannot be checked is not assumed
to have not happened.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("stylestudio.credentials")

# A state is only worth caching for a moment: this bounds how stale any process can be.
DEFAULT_CACHE_SECONDS = 0.5
# The version of "this account does not exist": newer than any live state, since a user id is
# never given again, so no copy of a live state can replace it.
GONE_VERSION = 2**62
_MAX_CACHED = 100_000

# Replace the stored state only with one at least as new (KEYS[1]; ARGV: version, JSON, ttl).
_PUBLISH_SCRIPT = """
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'state', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class CredentialState:
    """A user's role and plan now, the sessions ended recently, and whether the account exists."""

    version: int
    role: str = ""
    plan: str = ""
    # Sessions ended within an access token's lifetime: their tokens are refused.
    ended_sessions: frozenset[str] = frozenset()
    exists: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {
                "role": self.role,
                "plan": self.plan,
                "ended_sessions": sorted(self.ended_sessions),
                "exists": self.exists,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, version: int, document: str | bytes) -> CredentialState:
        data = json.loads(document)
        return cls(
            version=version,
            role=str(data.get("role", "")),
            plan=str(data.get("plan", "")),
            ended_sessions=frozenset(str(s) for s in data.get("ended_sessions", ())),
            exists=bool(data.get("exists", False)),
        )

    @classmethod
    def gone(cls) -> CredentialState:
        return cls(version=GONE_VERSION, exists=False)


def state_key(prefix: str, user_id: str) -> str:
    return f"{prefix}:credentials:{user_id}"


class CredentialStateStore:
    """The Redis copy of every user's credential state (written by the users service only)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._publish = redis.register_script(_PUBLISH_SCRIPT)

    async def read(self, user_id: str) -> CredentialState | None:
        """The stored state, or None when there is none (raises RedisError when unreachable)."""
        version, document = await self._redis.hmget(state_key(self._prefix, user_id), ["v", "state"])
        if version is None or document is None:
            return None
        return CredentialState.from_json(int(version), document)

    async def publish(self, user_id: str, state: CredentialState, ttl_seconds: int) -> bool:
        """Store ``state`` unless a newer one is there; True if it was stored."""
        key = state_key(self._prefix, user_id)
        stored = await self._publish(keys=[key], args=[state.version, state.to_json(), ttl_seconds])
        return bool(stored)

    async def forget(self, user_id: str) -> None:
        """Drop the stored state: the next reader rebuilds it from the users database."""
        await self._redis.delete(state_key(self._prefix, user_id))


StateSource = Callable[[str], Awaitable[CredentialState]]
"""The users service's answer for one user, read from its database (and stored in Redis)."""


class CredentialStates:
    """Reads users' current credential state: memory (briefly), then Redis, then the users service."""

    def __init__(
        self,
        store: CredentialStateStore,
        source: StateSource,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ) -> None:
        self._store = store
        self._source = source
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[CredentialState, float]] = {}
        self._redis_down_logged_at = float("-inf")

    async def current(self, user_id: str) -> CredentialState:
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        state = await self._read(user_id)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[user_id] = (state, time.monotonic() + self._cache_seconds)
        return state

    async def _read(self, user_id: str) -> CredentialState:
        try:
            stored = await self._store.read(user_id)
        except (RedisError, OSError, ValueError) as error:
            # The database is the truth and Redis only spares it: ask the users service.
            self._log_redis_down(error)
            stored = None
        if stored is not None:
            return stored
        return await self._source(user_id)

    def forget(self, user_ids: Iterable[str]) -> None:
        """Drop this process's cached states (the users service does after its own changes)."""
        for user_id in user_ids:
            self._cache.pop(user_id, None)

    def _log_redis_down(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._redis_down_logged_at >= 10.0:
            self._redis_down_logged_at = now
            log.warning(
                "credential states unreadable in Redis; asking the users service",
                extra={"error": type(error).__name__},
            )
