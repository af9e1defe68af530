"""API keys: long-lived "sk_" credentials for scripts, on plans that include API access.

The secret is 256 random bits, shown once; only its SHA-256 is stored (a fast hash is
enough for a secret that cannot be guessed, and lets every request be resolved by one
indexed lookup). A deleted key stops working here at once, and in every other service
within a second (the deletion bumps the owner's credential state; services/users/credentials.py).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from kit import audit, paging
from kit.auth import Caller, CallerKind
from kit.db import Database
from kit.errors import NotFound, Unauthenticated, ValidationError
from kit.events import Outbox
from kit.idempotency import IdempotencyKeyReused
from kit.plans import Feature
from kit.tokens import API_KEY_PREFIX
from services.users import accounts, store
from services.users.credentials import Credentials

SECRET_PREFIX = f"{API_KEY_PREFIX}live_"
# What ListApiKeys shows of a secret: "sk_live_" and four characters of it.
SHOWN_PREFIX_LENGTH = len(SECRET_PREFIX) + 4


@dataclass(frozen=True)
class CreatedKey:
    key: store.Row
    # Empty when an idempotent retry found the key created earlier: the secret is never stored.
    secret: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ApiKeys:
    def __init__(self, db: Database, outbox: Outbox, credentials: Credentials) -> None:
        self._db = db
        self._outbox = outbox
        self._credentials = credentials

    async def create(self, user_id: uuid.UUID, plan: str, name: str, idempotency_key: str) -> CreatedKey:
        accounts.require_feature(plan, Feature.API_ACCESS)
        name = name.strip()
        if not name or len(name) > accounts.NAME_MAX_LENGTH or not name.isprintable():
            raise ValidationError(f"Name must be 1 to {accounts.NAME_MAX_LENGTH} characters", field="name")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        async with self._db.transaction() as session:
            user = await store.get_user(session, user_id)
            if user is None:
                raise NotFound("User not found")
            # The plan in the database wins over the token's, which may be minutes old.
            accounts.require_feature(user.plan, Feature.API_ACCESS)
            key = await store.insert_api_key(
                session,
                user_id=user_id,
                name=name,
                prefix=secret[:SHOWN_PREFIX_LENGTH],
                secret_hash=hash_secret(secret),
                idempotency_key=idempotency_key or None,
            )
            if key is None:
                earlier = await store.api_key_by_idempotency_key(session, user_id, idempotency_key)
                assert earlier is not None
                if earlier.name != name:  # the name is the whole request (kit.idempotency's rule)
                    raise IdempotencyKeyReused(idempotency_key)
                return CreatedKey(earlier, "")
            await audit.record(
                self._outbox, session, audit.API_KEY_CREATED, target=_key_target(user_id, key.id)
            )
        return CreatedKey(key, secret)

    async def list(self, user_id: uuid.UUID, page_size: int, page_token: str) -> tuple[list[store.Row], str]:
        size = paging.page_size(page_size)
        after = paging.decode_cursor(page_token)
        async with self._db.autocommit() as session:
            rows = await store.list_api_keys(session, user_id, limit=size + 1, after=after)
        return paging.page_of(rows, size, paging.cursor_of)

    async def delete(self, user_id: uuid.UUID, key_id: str) -> None:
        try:
            parsed = uuid.UUID(key_id)
        except ValueError:
            raise NotFound("API key not found") from None
        async with self._db.transaction() as session:
            if not await store.revoke_api_key(session, user_id, parsed):
                raise NotFound("API key not found")
            await audit.record(
                self._outbox, session, audit.API_KEY_DELETED, target=_key_target(user_id, parsed)
            )
            state = await self._credentials.changed(session, user_id)
        await self._credentials.publish(user_id, state)

    async def authenticate(self, secret: str) -> tuple[Caller, int]:
        """The Caller of a live key whose owner's plan includes API access, and the owner's
        credentials version (kit.tokens.ApiKeyVerifier keeps the answer until it changes)."""
        if not secret.startswith(API_KEY_PREFIX):
            raise Unauthenticated("Invalid API key")
        async with self._db.autocommit() as session:
            owner = await store.api_key_owner(session, hash_secret(secret))
        if owner is None:
            raise Unauthenticated("Invalid or revoked API key")
        accounts.require_feature(owner.plan, Feature.API_ACCESS)
        caller = Caller(
            kind=CallerKind.USER,
            subject=str(owner.id),
            plan=owner.plan,
            role=owner.role,
            api_key_id=str(owner.key_id),
        )
        return caller, int(owner.credentials_version)


def _key_target(user_id: uuid.UUID, key_id: uuid.UUID) -> str:
    return f"{audit.user_target(user_id)}/apiKeys/{key_id}"
