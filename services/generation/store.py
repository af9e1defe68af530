"""The only place that talks SQL for the generation service.

Every change of a generation's state is a guarded UPDATE (its WHERE says which
states it may come from), so concurrent actors (workers, cancel, webhook, sweeper)
never both win the same move.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from kit import paging
from services.generation.lifecycle import RUNNING, TERMINAL, VISIBLE, Status
from services.generation.models import generations, replicate_webhooks

g = generations
Generation = Row[Any]
NOW = sa.func.now()


def _names(statuses: frozenset[Status] | set[Status]) -> list[str]:
    return sorted(status.value for status in statuses)


async def get(session: AsyncConnection, generation_id: uuid.UUID) -> Generation | None:
    return (await session.execute(sa.select(g).where(g.c.id == generation_id))).first()


async def get_visible(session: AsyncConnection, generation_id: uuid.UUID, user_id: str) -> Generation | None:
    """The user's generation, unless it is still STARTING (then it does not exist yet)."""
    return (
        await session.execute(
            sa.select(g).where(
                g.c.id == generation_id, g.c.user_id == user_id, g.c.status.in_(_names(VISIBLE))
            )
        )
    ).first()


async def find_by_idempotency_key(session: AsyncConnection, user_id: str, key: str) -> Generation | None:
    return (
        await session.execute(sa.select(g).where(g.c.user_id == user_id, g.c.idempotency_key == key))
    ).first()


async def find_by_idempotency_keys(
    session: AsyncConnection, user_id: str, keys: list[str]
) -> list[Generation]:
    query = sa.select(g).where(g.c.user_id == user_id, g.c.idempotency_key.in_(keys))
    return list((await session.execute(query)).all())


async def insert_starting(session: AsyncConnection, values: dict[str, Any]) -> Generation | None:
    """Insert a STARTING generation (returned); None if the user's idempotency key is taken already."""
    statement = pg_insert(g).values(status=Status.STARTING.value, **values)
    if values.get("idempotency_key") is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=[g.c.user_id, g.c.idempotency_key],
            index_where=g.c.idempotency_key.isnot(None),
        )
    return (await session.execute(statement.returning(g))).first()


async def lock_starting(session: AsyncConnection, generation_id: uuid.UUID) -> bool:
    """Lock the generation's row if it is still STARTING (queueing it waits meanwhile)."""
    found = await session.execute(
        sa.select(g.c.id)
        .where(g.c.id == generation_id, g.c.status == Status.STARTING.value)
        .with_for_update()
    )
    return found.first() is not None


async def delete_starting(session: AsyncConnection, generation_id: uuid.UUID) -> bool:
    deleted = await session.execute(
        sa.delete(g).where(g.c.id == generation_id, g.c.status == Status.STARTING.value).returning(g.c.id)
    )
    return deleted.first() is not None


async def mark_queued(session: AsyncConnection, generation_id: uuid.UUID, hold_id: str) -> Generation | None:
    return (
        await session.execute(
            sa.update(g)
            .where(g.c.id == generation_id, g.c.status == Status.STARTING.value)
            .values(status=Status.QUEUED.value, hold_id=hold_id, updated_at=NOW)
            .returning(g)
        )
    ).first()


async def take_for_processing(
    session: AsyncConnection, generation_id: uuid.UUID, lease_seconds: float, job_attempt: int = 0
) -> Generation | None:
    """PROCESSING for this worker, if it is QUEUED or its previous worker's lease ran out.

    A job the sweeper re-sent for a lapsed lease carries the next attempt's number (``job_attempt``
    = the generation's attempt + 1) while the sweeper holds the lease off re-sending it again: that
    job takes the generation whatever the lease says, as long as nobody took it since (its
    attempt is still the one before). A redelivered older job does not."""
    lease_over = sa.or_(g.c.lease_until.is_(None), g.c.lease_until < NOW)
    if job_attempt > 1:
        lease_over = sa.or_(lease_over, g.c.attempt == job_attempt - 1)
    return (
        await session.execute(
            sa.update(g)
            .where(
                g.c.id == generation_id,
                g.c.resolution.is_(None),
                sa.or_(
                    g.c.status == Status.QUEUED.value,
                    sa.and_(g.c.status == Status.PROCESSING.value, lease_over),
                ),
            )
            .values(
                status=Status.PROCESSING.value,
                attempt=g.c.attempt + 1,
                started_at=sa.func.coalesce(g.c.started_at, NOW),
                lease_until=NOW + timedelta(seconds=lease_seconds),
                updated_at=NOW,
            )
            .returning(g)
        )
    ).first()


async def extend_lease(session: AsyncConnection, generation_id: uuid.UUID, lease_seconds: float) -> None:
    await session.execute(
        sa.update(g)
        .where(g.c.id == generation_id, g.c.status == Status.PROCESSING.value, g.c.resolution.is_(None))
        .values(lease_until=NOW + timedelta(seconds=lease_seconds))
    )


async def set_prediction(
    session: AsyncConnection, generation_id: uuid.UUID, prediction_id: str, lease_seconds: float
) -> bool:
    """Remember the provider's prediction (the lease is how long to wait before polling it),
    unless the generation already has one: False then (the first prediction saved wins)."""
    saved = await session.execute(
        sa.update(g)
        .where(g.c.id == generation_id, g.c.prediction_id.is_(None), g.c.resolution.is_(None))
        .values(
            prediction_id=prediction_id,
            lease_until=NOW + timedelta(seconds=lease_seconds),
            updated_at=NOW,
        )
        .returning(g.c.id)
    )
    return saved.first() is not None


async def decide(
    session: AsyncConnection,
    generation_id: uuid.UUID,
    outcome: Status,
    *,
    reason: str = "",
    message: str = "",
    result_files: Sequence[str] = (),
) -> Generation | None:
    """Decide the outcome of a running generation; None if someone else decided first."""
    values: dict[str, Any] = {"resolution": outcome.value, "updated_at": NOW}
    if reason:
        values |= {"error_reason": reason, "error_message": message}
    if result_files:
        values["result_image_files"] = list(result_files)
    return (
        await session.execute(
            sa.update(g)
            .where(g.c.id == generation_id, g.c.resolution.is_(None), g.c.status.in_(_names(RUNNING)))
            .values(**values)
            .returning(g)
        )
    ).first()


async def record_outcome(session: AsyncConnection, generation_id: uuid.UUID) -> Generation | None:
    """Make the decided outcome the status; None if it was recorded already."""
    elapsed_ms = sa.func.floor(sa.extract("epoch", NOW - sa.func.coalesce(g.c.started_at, NOW)) * 1000)
    return (
        await session.execute(
            sa.update(g)
            .where(g.c.id == generation_id, g.c.resolution.isnot(None), g.c.status.notin_(_names(TERMINAL)))
            .values(
                status=g.c.resolution,
                completed_at=NOW,
                processing_time_ms=sa.cast(elapsed_ms, sa.BigInteger),
                lease_until=None,
                updated_at=NOW,
            )
            .returning(g)
        )
    ).first()


async def list_for_user(
    session: AsyncConnection, user_id: str, status: Status | None, after: paging.Cursor | None, limit: int
) -> list[Generation]:
    """Up to ``limit`` of the user's generations, newest first, after the cursor when given."""
    query = sa.select(g).where(g.c.user_id == user_id, g.c.status.in_(_names(VISIBLE)))
    if status is not None:
        query = query.where(g.c.status == status.value)
    if after is not None:
        query = query.where(sa.tuple_(g.c.created_at, g.c.id) < sa.tuple_(*after))
    query = query.order_by(g.c.created_at.desc(), g.c.id.desc()).limit(limit)
    return list((await session.execute(query)).all())


async def user_stats(session: AsyncConnection, user_id: str) -> tuple[int, int, int]:
    row = (
        await session.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(g.c.status == Status.COMPLETED.value),
                sa.func.count().filter(g.c.status == Status.FAILED.value),
            ).where(g.c.user_id == user_id, g.c.status.in_(_names(VISIBLE)))
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def queued_count(session: AsyncConnection) -> int:
    """How many generations wait for a worker (QUEUED): the queue's depth, for admission."""
    count = await session.scalar(
        sa.select(sa.func.count()).select_from(g).where(g.c.status == Status.QUEUED.value)
    )
    return int(count or 0)


# --- The sweeper's views of sagas that stopped half-way ---------------------------------


async def abandoned_starts(session: AsyncConnection, older_than: float, limit: int) -> list[Generation]:
    return list(
        (
            await session.execute(
                sa.select(g)
                .where(
                    g.c.status == Status.STARTING.value,
                    g.c.updated_at < NOW - timedelta(seconds=older_than),
                )
                .limit(limit)
            )
        ).all()
    )


async def past_deadline(session: AsyncConnection, limit: int) -> list[Generation]:
    return list(
        (
            await session.execute(
                sa.select(g)
                .where(g.c.status.in_(_names(RUNNING)), g.c.resolution.is_(None), g.c.deadline < NOW)
                .limit(limit)
            )
        ).all()
    )


async def unrecorded_outcomes(session: AsyncConnection, older_than: float, limit: int) -> list[Generation]:
    return list(
        (
            await session.execute(
                sa.select(g)
                .where(
                    g.c.status.in_(_names(RUNNING)),
                    g.c.resolution.isnot(None),
                    g.c.updated_at < NOW - timedelta(seconds=older_than),
                )
                .limit(limit)
            )
        ).all()
    )


async def stalled(session: AsyncConnection, queued_older_than: float, limit: int) -> list[Generation]:
    """QUEUED ones nobody took, and PROCESSING ones whose worker's lease ran out."""
    return list(
        (
            await session.execute(
                sa.select(g)
                .where(
                    g.c.resolution.is_(None),
                    sa.or_(
                        sa.and_(
                            g.c.status == Status.QUEUED.value,
                            g.c.updated_at < NOW - timedelta(seconds=queued_older_than),
                        ),
                        sa.and_(g.c.status == Status.PROCESSING.value, g.c.lease_until < NOW),
                    ),
                )
                .limit(limit)
            )
        ).all()
    )


async def touch(
    session: AsyncConnection, generation_id: uuid.UUID, lease_seconds: float | None = None
) -> None:
    """Note that the sweeper re-sent its job, so it does not do so again at once."""
    values: dict[str, Any] = {"updated_at": NOW}
    if lease_seconds is not None:
        values["lease_until"] = NOW + timedelta(seconds=lease_seconds)
    await session.execute(sa.update(g).where(g.c.id == generation_id).values(**values))


# --- Replicate webhooks -----------------------------------------------------------------


async def record_webhook(session: AsyncConnection, webhook_id: str, prediction_id: str, status: str) -> bool:
    """False if this webhook-id was handled already."""
    inserted = await session.execute(
        pg_insert(replicate_webhooks)
        .values(webhook_id=webhook_id, prediction_id=prediction_id, prediction_status=status)
        .on_conflict_do_nothing()
        .returning(replicate_webhooks.c.webhook_id)
    )
    return inserted.first() is not None


async def find_by_prediction(session: AsyncConnection, prediction_id: str) -> Generation | None:
    return (await session.execute(sa.select(g).where(g.c.prediction_id == prediction_id))).first()
