"""Keeping every service's view of a user's credentials fresh (kit/credential_state.py).

Every change to what a user's credentials may do (role, plan, an ended session, a deleted
API key) goes through two calls, in this order:

    async with db.transaction() as session:
        ...the change...
        state = await credentials.changed(session, user_id)   # bumps the version, drops the Redis copy
    await credentials.publish(user_id, state)                 # after the commit: the new copy

``changed`` drops the Redis copy before the commit: if Redis cannot be reached, the change
is refused (and rolled back) rather than made without every service knowing. A reader that
rebuilds the state between that and the commit reads the old version, which ``publish``
(or any later rebuild) replaces; a copy never replaces a newer one. When Redis fails after
the commit, the copy is simply missing and the next reader rebuilds it from this database.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.credential_state import CredentialState, CredentialStates, CredentialStateStore
from kit.db import Database
from kit.errors import DependencyUnavailable
from services.users import store
from services.users.settings import UsersSettings

log = logging.getLogger("stylestudio.users.credentials")


class Credentials:
    """The users service's side of credential states: the source every other service asks."""

    def __init__(self, db: Database, redis: Redis, settings: UsersSettings) -> None:
        self._db = db
        self._store = CredentialStateStore(redis, settings.redis_prefix)
        self._ttl = settings.credential_state_ttl_seconds
        # A session's access tokens live this long after it ended (plus clocks' allowance).
        self._ended_window = dt.timedelta(
            seconds=settings.access_token_ttl_seconds + settings.key_retirement_margin_seconds
        )
        # This process's own reader (its token checks): forgets a user the moment it changes.
        self.states = CredentialStates(self._store, self.rebuild, settings.credential_state_cache_seconds)

    async def changed(self, session: AsyncConnection, user_id: uuid.UUID) -> CredentialState:
        """Record, inside the change's transaction, that ``user_id``'s credentials change."""
        row = await store.bump_credentials_version(session, user_id)
        if row is None:
            return CredentialState.gone()
        state = await self._state_from(session, user_id, row)
        try:
            await self._store.forget(str(user_id))
        except (RedisError, OSError) as error:
            raise DependencyUnavailable(
                "redis", "Cannot record this change right now; try again shortly"
            ) from error
        return state

    async def publish(self, user_id: uuid.UUID, state: CredentialState) -> None:
        """Store the state a committed change left (a failure only costs a rebuild later)."""
        self.states.forget([str(user_id)])
        try:
            await self._store.publish(str(user_id), state, self._ttl)
        except (RedisError, OSError) as error:
            log.warning(
                "credential state not stored; rebuilt on next use", extra={"error": type(error).__name__}
            )

    async def rebuild(self, user_id: str) -> CredentialState:
        """The state from this database, stored again in Redis (a missing copy is never "all fine")."""
        try:
            parsed = uuid.UUID(user_id)
        except ValueError:
            return CredentialState.gone()
        async with self._db.transaction() as session:
            row = await store.credentials_of(session, parsed)
            if row is None:
                state = CredentialState.gone()
            else:
                state = await self._state_from(session, parsed, row)
        try:
            await self._store.publish(user_id, state, self._ttl)
        except (RedisError, OSError) as error:
            log.warning("credential state not stored", extra={"error": type(error).__name__})
        return state

    async def _state_from(
        self, session: AsyncConnection, user_id: uuid.UUID, row: store.Row
    ) -> CredentialState:
        ended = await store.sessions_ended_since(session, user_id, self._ended_window)
        return CredentialState(
            version=row.credentials_version,
            role=row.role,
            plan=row.plan,
            ended_sessions=frozenset(str(session_id) for session_id in ended),
        )
