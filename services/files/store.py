"""The only place that talks SQL for the files service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.files.models import (
    ACTIVE,
    DELETED,
    discarded_generations,
    file_references,
    files,
    storage_accounts,
    upload_reservations,
)

FileRow = Row  # a row of ``files``


# Files -----------------------------------------------------------------------------------------


async def insert_file(session: AsyncConnection, values: dict[str, object]) -> dict[str, object]:
    """Insert a file; the stored row, with its creation time."""
    row = (await session.execute(sa.insert(files).values(**values).returning(files))).one()
    return dict(row._mapping)


async def active_file(
    session: AsyncConnection, user_id: str, file_id: uuid.UUID, *, lock: bool = False
) -> FileRow | None:
    query = sa.select(files).where(
        files.c.id == file_id, files.c.user_id == user_id, files.c.status == ACTIVE
    )
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def active_file_by_id(session: AsyncConnection, file_id: uuid.UUID) -> FileRow | None:
    """Whoever owns it: for signed links, whose signature is the permission."""
    query = sa.select(files).where(files.c.id == file_id, files.c.status == ACTIVE)
    return (await session.execute(query)).first()


async def set_thumbnail_key(session: AsyncConnection, file_id: uuid.UUID, key: str) -> bool:
    """Records a thumbnail; False once the file's bytes were purged (the thumbnail is an orphan)."""
    statement = (
        sa.update(files).where(files.c.id == file_id, files.c.purged_at.is_(None)).values(thumbnail_key=key)
    )
    return bool((await session.execute(statement)).rowcount)


async def active_files(
    session: AsyncConnection, user_id: str, file_ids: Sequence[uuid.UUID], *, lock: bool = False
) -> list[FileRow]:
    query = sa.select(files).where(
        files.c.id.in_(file_ids), files.c.user_id == user_id, files.c.status == ACTIVE
    )
    if lock:
        # Same order everywhere, so two transactions locking overlapping sets cannot deadlock.
        query = query.order_by(files.c.id).with_for_update()
    return list((await session.execute(query)).all())


async def file_by_idempotency_key(session: AsyncConnection, user_id: str, key: str) -> FileRow | None:
    """The file this user's key created, deleted or not (a key is spent once used)."""
    query = sa.select(files).where(files.c.user_id == user_id, files.c.idempotency_key == key)
    return (await session.execute(query)).first()


async def generation_results(session: AsyncConnection, generation_id: str) -> list[FileRow]:
    query = sa.select(files).where(files.c.generation_id == generation_id).order_by(files.c.image_order)
    return list((await session.execute(query)).all())


async def list_active_files(
    session: AsyncConnection,
    user_id: str,
    *,
    category: str,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[FileRow]:
    """Newest first, keyset-paged on (created_at, id)."""
    query = sa.select(files).where(files.c.user_id == user_id, files.c.status == ACTIVE)
    if category:
        query = query.where(files.c.category == category)
    if after is not None:
        query = query.where(sa.tuple_(files.c.created_at, files.c.id) < sa.tuple_(*after))
    query = query.order_by(files.c.created_at.desc(), files.c.id.desc()).limit(limit)
    return list((await session.execute(query)).all())


async def active_generation_results(
    session: AsyncConnection, user_id: str, generation_id: str
) -> list[FileRow]:
    """A generation's stored results that are not deleted yet, locked."""
    query = (
        sa.select(files)
        .where(files.c.generation_id == generation_id, files.c.user_id == user_id, files.c.status == ACTIVE)
        .with_for_update()
    )
    return list((await session.execute(query)).all())


async def mark_deleted(session: AsyncConnection, file_id: uuid.UUID) -> None:
    await session.execute(
        sa.update(files).where(files.c.id == file_id).values(status=DELETED, deleted_at=sa.func.now())
    )


async def files_awaiting_purge(session: AsyncConnection, limit: int) -> list[FileRow]:
    """Deleted files whose bytes are still stored and that no generation references; locked."""
    referenced = sa.exists().where(file_references.c.file_id == files.c.id)
    query = (
        sa.select(files.c.id, files.c.storage_key, files.c.thumbnail_key)
        .where(files.c.status == DELETED, files.c.purged_at.is_(None), ~referenced)
        .order_by(files.c.deleted_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).all())


async def mark_purged(session: AsyncConnection, file_id: uuid.UUID) -> None:
    await session.execute(sa.update(files).where(files.c.id == file_id).values(purged_at=sa.func.now()))


async def usage_by_category(session: AsyncConnection, user_id: str) -> list[Row]:
    query = (
        sa.select(
            files.c.category,
            sa.func.coalesce(sa.func.sum(files.c.size), 0).label("total_bytes"),
            sa.func.count().label("file_count"),
        )
        .where(files.c.user_id == user_id, files.c.status == ACTIVE)
        .group_by(files.c.category)
    )
    return list((await session.execute(query)).all())


# Storage accounts and upload reservations -------------------------------------------------------


async def ensure_account(session: AsyncConnection, user_id: str, plan: str | None) -> None:
    """Create the user's account; remember the plan when the caller's token told us one."""
    insert = pg_insert(storage_accounts).values(user_id=user_id, plan=plan or "free")
    if plan:
        statement = insert.on_conflict_do_update(
            index_elements=[storage_accounts.c.user_id],
            set_={"plan": plan},
            where=storage_accounts.c.plan != plan,
        )
    else:
        statement = insert.on_conflict_do_nothing()
    await session.execute(statement)


async def account(session: AsyncConnection, user_id: str) -> Row | None:
    query = sa.select(storage_accounts).where(storage_accounts.c.user_id == user_id)
    return (await session.execute(query)).first()


async def create_reservation(
    session: AsyncConnection, file_id: uuid.UUID, user_id: str, backend: str, key: str
) -> None:
    await session.execute(
        sa.insert(upload_reservations).values(
            file_id=file_id, user_id=user_id, storage_backend=backend, storage_key=key
        )
    )


async def reserve_bytes(
    session: AsyncConnection, file_id: uuid.UUID, user_id: str, amount: int, quota: int
) -> bool:
    """Reserve ``amount`` more bytes for an upload if the quota allows it; atomic per user."""
    a = storage_accounts.c
    reserved = await session.execute(
        sa.update(storage_accounts)
        .where(a.user_id == user_id, a.used_bytes + a.reserved_bytes + amount <= quota)
        .values(reserved_bytes=a.reserved_bytes + amount, updated_at=sa.func.now())
        .returning(a.user_id)
    )
    if reserved.first() is None:
        return False
    await session.execute(
        sa.update(upload_reservations)
        .where(upload_reservations.c.file_id == file_id)
        .values(bytes=upload_reservations.c.bytes + amount, updated_at=sa.func.now())
    )
    return True


class ReservationExpired(Exception):
    """The upload's reservation was given back (by the janitor) before the upload finished."""


async def settle_reservation(
    session: AsyncConnection, file_id: uuid.UUID, user_id: str, stored_bytes: int, quota: int | None
) -> bool:
    """Turn an upload's reservation into usage of ``stored_bytes``; False if that breaks the quota."""
    reserved = await _take_reservation(session, file_id)
    if reserved is None:
        raise ReservationExpired(str(file_id))
    a = storage_accounts.c
    statement = sa.update(storage_accounts).where(a.user_id == user_id)
    if quota is not None:
        statement = statement.where(a.used_bytes + a.reserved_bytes - reserved + stored_bytes <= quota)
    settled = await session.execute(
        statement.values(
            used_bytes=a.used_bytes + stored_bytes,
            reserved_bytes=a.reserved_bytes - reserved,
            updated_at=sa.func.now(),
        ).returning(a.user_id)
    )
    return settled.first() is not None


async def release_reservation(session: AsyncConnection, file_id: uuid.UUID) -> str | None:
    """Give an upload's reserved bytes back; the storage key it may have written, if it existed."""
    row = (
        await session.execute(
            sa.delete(upload_reservations)
            .where(upload_reservations.c.file_id == file_id)
            .returning(
                upload_reservations.c.user_id, upload_reservations.c.bytes, upload_reservations.c.storage_key
            )
        )
    ).first()
    if row is None:
        return None
    await _adjust_reserved(session, row.user_id, -row.bytes)
    return str(row.storage_key)


async def stale_reservations(session: AsyncConnection, older_than_seconds: float, limit: int) -> list[Row]:
    query = (
        sa.select(upload_reservations.c.file_id)
        .where(upload_reservations.c.updated_at < sa.func.now() - timedelta(seconds=older_than_seconds))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).all())


async def add_usage(session: AsyncConnection, user_id: str, delta: int) -> None:
    a = storage_accounts.c
    await session.execute(
        sa.update(storage_accounts)
        .where(a.user_id == user_id)
        .values(used_bytes=a.used_bytes + delta, updated_at=sa.func.now())
    )


async def _take_reservation(session: AsyncConnection, file_id: uuid.UUID) -> int | None:
    row = (
        await session.execute(
            sa.delete(upload_reservations)
            .where(upload_reservations.c.file_id == file_id)
            .returning(upload_reservations.c.bytes)
        )
    ).first()
    return int(row.bytes) if row is not None else None


async def _adjust_reserved(session: AsyncConnection, user_id: str, delta: int) -> None:
    a = storage_accounts.c
    await session.execute(
        sa.update(storage_accounts)
        .where(a.user_id == user_id)
        .values(reserved_bytes=a.reserved_bytes + delta, updated_at=sa.func.now())
    )


# References held by running generations ---------------------------------------------------------


async def add_references(session: AsyncConnection, generation_id: str, file_ids: Sequence[uuid.UUID]) -> None:
    if not file_ids:
        return
    await session.execute(
        pg_insert(file_references)
        .values([{"generation_id": generation_id, "file_id": file_id} for file_id in file_ids])
        .on_conflict_do_nothing()
    )


async def remove_references(
    session: AsyncConnection, generation_id: str, file_ids: Sequence[uuid.UUID]
) -> None:
    statement = sa.delete(file_references).where(file_references.c.generation_id == generation_id)
    if file_ids:
        statement = statement.where(file_references.c.file_id.in_(file_ids))
    await session.execute(statement)


async def is_referenced(session: AsyncConnection, file_id: uuid.UUID) -> bool:
    query = sa.select(sa.exists().where(file_references.c.file_id == file_id))
    return bool((await session.execute(query)).scalar())


# Generations whose results were discarded ------------------------------------------------------


async def lock_generation_results(session: AsyncConnection, generation_id: str) -> None:
    """Serialises storing and discarding one generation's results until the transaction ends:
    without it, a store and a discard running at once could each miss the other's rows."""
    await session.execute(
        sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(generation_id, 0)))
    )


async def mark_generation_discarded(session: AsyncConnection, user_id: str, generation_id: str) -> None:
    await session.execute(
        pg_insert(discarded_generations)
        .values(generation_id=generation_id, user_id=user_id)
        .on_conflict_do_nothing()
    )


async def is_generation_discarded(session: AsyncConnection, generation_id: str) -> bool:
    query = sa.select(sa.exists().where(discarded_generations.c.generation_id == generation_id))
    return bool((await session.execute(query)).scalar())


async def forget_discarded_generations(
    session: AsyncConnection, older_than_seconds: float, limit: int
) -> int:
    """Forget up to ``limit`` discarded generations older than that; how many."""
    oldest = (
        sa.select(discarded_generations.c.generation_id)
        .where(discarded_generations.c.discarded_at < sa.func.now() - timedelta(seconds=older_than_seconds))
        .limit(limit)
    )
    result = await session.execute(
        sa.delete(discarded_generations).where(
            discarded_generations.c.generation_id.in_(oldest.scalar_subquery())
        )
    )
    return int(result.rowcount)
