"""The only place that talks SQL for the users service."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.users.models import api_keys, oauth_accounts, refresh_tokens, sessions, users

# Rows come back with every column typed Any; one alias keeps signatures readable.
Row = Any


# --- accounts ---


async def get_user(session: AsyncConnection, user_id: uuid.UUID, *, for_update: bool = False) -> Row | None:
    query = sa.select(users).where(users.c.id == user_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def get_user_by_email(session: AsyncConnection, email: str) -> Row | None:
    return (await session.execute(sa.select(users).where(users.c.email == email))).first()


async def insert_user(
    session: AsyncConnection, *, email: str, name: str, password_hash: str | None, image_url: str = ""
) -> Row | None:
    """The new account, or None if the email is taken (decided by the unique constraint)."""
    query = (
        pg_insert(users)
        .values(id=uuid.uuid4(), email=email, name=name, password_hash=password_hash, image_url=image_url)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(*users.c)
    )
    return (await session.execute(query)).first()


async def update_user(session: AsyncConnection, user_id: uuid.UUID, **values: object) -> Row:
    query = sa.update(users).where(users.c.id == user_id).values(**values).returning(*users.c)
    return (await session.execute(query)).one()


async def record_login(session: AsyncConnection, user_id: uuid.UUID) -> Row:
    return await update_user(session, user_id, last_login_at=sa.func.now())


async def count_admins(session: AsyncConnection) -> int:
    return int(
        (await session.execute(sa.select(sa.func.count()).where(users.c.role == "admin"))).scalar_one()
    )


# --- credential state ---


async def bump_credentials_version(session: AsyncConnection, user_id: uuid.UUID) -> Row | None:
    """Role, plan and the new version of a user whose credentials change in this transaction."""
    query = (
        sa.update(users)
        .where(users.c.id == user_id)
        .values(credentials_version=users.c.credentials_version + 1)
        .returning(users.c.role, users.c.plan, users.c.credentials_version)
    )
    return (await session.execute(query)).first()


async def credentials_of(session: AsyncConnection, user_id: uuid.UUID) -> Row | None:
    query = sa.select(users.c.role, users.c.plan, users.c.credentials_version).where(users.c.id == user_id)
    return (await session.execute(query)).first()


async def sessions_ended_since(
    session: AsyncConnection, user_id: uuid.UUID, since: dt.timedelta
) -> list[uuid.UUID]:
    """Sessions of the user ended less than ``since`` ago (older ones' tokens have expired)."""
    query = sa.select(sessions.c.id).where(
        sessions.c.user_id == user_id,
        sessions.c.revoked_at.is_not(None),
        sessions.c.revoked_at > sa.func.now() - since,
    )
    return list((await session.execute(query)).scalars())


# --- provider accounts ---


async def user_id_for_provider(session: AsyncConnection, provider: str, subject: str) -> uuid.UUID | None:
    query = sa.select(oauth_accounts.c.user_id).where(
        oauth_accounts.c.provider == provider, oauth_accounts.c.subject == subject
    )
    return (await session.execute(query)).scalar_one_or_none()


async def link_provider(session: AsyncConnection, provider: str, subject: str, user_id: uuid.UUID) -> None:
    await session.execute(
        pg_insert(oauth_accounts)
        .values(provider=provider, subject=subject, user_id=user_id)
        .on_conflict_do_nothing(index_elements=["provider", "subject"])
    )


# --- sessions and refresh tokens ---


async def open_session(
    session: AsyncConnection, *, user_id: uuid.UUID, method: str, ip: str, user_agent: str
) -> uuid.UUID:
    session_id = uuid.uuid4()
    await session.execute(
        sa.insert(sessions).values(
            id=session_id, user_id=user_id, method=method, ip=ip, user_agent=user_agent
        )
    )
    return session_id


async def add_refresh_token(
    session: AsyncConnection, *, session_id: uuid.UUID, token_hash: bytes, expires_at: dt.datetime
) -> None:
    await session.execute(
        sa.insert(refresh_tokens).values(token_hash=token_hash, session_id=session_id, expires_at=expires_at)
    )


async def refresh_token_for_update(session: AsyncConnection, token_hash: bytes) -> Row | None:
    """The token with its session's state, locked so two refreshes with it cannot both win."""
    query = (
        sa.select(
            refresh_tokens.c.token_hash,
            refresh_tokens.c.session_id,
            refresh_tokens.c.expires_at,
            refresh_tokens.c.used_at,
            sessions.c.user_id,
            sessions.c.revoked_at,
        )
        .join(sessions, sessions.c.id == refresh_tokens.c.session_id)
        .where(refresh_tokens.c.token_hash == token_hash)
        .with_for_update(of=refresh_tokens)
    )
    return (await session.execute(query)).first()


async def mark_refresh_token_used(session: AsyncConnection, token_hash: bytes) -> None:
    await session.execute(
        sa.update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == token_hash)
        .values(used_at=sa.func.now())
    )
    await session.execute(
        sa.update(sessions)
        .where(
            sessions.c.id
            == sa.select(refresh_tokens.c.session_id)
            .where(refresh_tokens.c.token_hash == token_hash)
            .scalar_subquery()
        )
        .values(last_refreshed_at=sa.func.now())
    )


async def revoke_session(session: AsyncConnection, session_id: uuid.UUID, reason: str) -> bool:
    """True if the session was active until now."""
    query = (
        sa.update(sessions)
        .where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), revoked_reason=reason)
        .returning(sessions.c.id)
    )
    return (await session.execute(query)).first() is not None


async def revoke_sessions_of(session: AsyncConnection, user_id: uuid.UUID, reason: str) -> list[uuid.UUID]:
    """End every active session of the user; the ids of those that were active until now."""
    query = (
        sa.update(sessions)
        .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), revoked_reason=reason)
        .returning(sessions.c.id)
    )
    return list((await session.execute(query)).scalars())


async def get_session(session: AsyncConnection, session_id: uuid.UUID) -> Row | None:
    return (await session.execute(sa.select(sessions).where(sessions.c.id == session_id))).first()


# --- API keys ---


async def insert_api_key(
    session: AsyncConnection,
    *,
    user_id: uuid.UUID,
    name: str,
    prefix: str,
    secret_hash: bytes,
    idempotency_key: str | None,
) -> Row | None:
    """The new key, or None if this user already created one with this idempotency key."""
    query = (
        pg_insert(api_keys)
        .values(
            id=uuid.uuid4(),
            user_id=user_id,
            name=name,
            prefix=prefix,
            secret_hash=secret_hash,
            idempotency_key=idempotency_key,
        )
        .on_conflict_do_nothing(constraint="uq_api_keys_user_id_idempotency_key")
        .returning(*api_keys.c)
    )
    return (await session.execute(query)).first()


async def api_key_by_idempotency_key(session: AsyncConnection, user_id: uuid.UUID, key: str) -> Row | None:
    query = sa.select(api_keys).where(api_keys.c.user_id == user_id, api_keys.c.idempotency_key == key)
    return (await session.execute(query)).first()


async def list_api_keys(
    session: AsyncConnection, user_id: uuid.UUID, *, limit: int, after: tuple[dt.datetime, uuid.UUID] | None
) -> list[Row]:
    """Live keys, newest first, keyset-paginated on (created_at, id)."""
    query = sa.select(api_keys).where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
    if after is not None:
        query = query.where(sa.tuple_(api_keys.c.created_at, api_keys.c.id) < sa.tuple_(*after))
    query = query.order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc()).limit(limit)
    return list((await session.execute(query)).all())


async def revoke_api_key(session: AsyncConnection, user_id: uuid.UUID, key_id: uuid.UUID) -> bool:
    query = (
        sa.update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
        .returning(api_keys.c.id)
    )
    return (await session.execute(query)).first() is not None


async def api_key_owner(session: AsyncConnection, secret_hash: bytes) -> Row | None:
    """The live key with its owner's plan, role and credentials version; records that it was used.

    One statement: the key's row is locked while the owner's row is read, so a deletion
    either committed before (the key is not live) or commits after, bumping the version
    past the one returned here (kit.tokens.ApiKeyVerifier then asks again)."""
    query = (
        sa.update(api_keys)
        .where(
            api_keys.c.secret_hash == secret_hash,
            api_keys.c.revoked_at.is_(None),
            users.c.id == api_keys.c.user_id,
        )
        .values(last_used_at=sa.func.now())
        .returning(
            users.c.id,
            users.c.plan,
            users.c.role,
            users.c.credentials_version,
            api_keys.c.id.label("key_id"),
        )
    )
    return (await session.execute(query)).first()
