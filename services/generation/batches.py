"""Batches and their summary: one ``generation.batch_completed`` event per batch, published
when every request of the batch has reached an end.

BatchCreateGenerations records the batch (its size: the number of requests) before its first
item starts, starts the items one after the other (each generation carries ``batch_id``), then
seals the batch. A request refused at creation (not enough tokens, a missing file) has no
generation; its part of the batch ends there.

The summary is decided under the batch row's lock, by whichever comes last: the sealing, or
the transaction recording the terminal status of one of the batch's generations (the saga's
``finish``, the one place outcomes are recorded). Under READ COMMITTED the statement after
the lock sees every outcome committed before it, so the last one sees them all; a batch
already summarized is left alone. The event goes into the outbox in that same transaction:
published exactly once, and after a crash either both the outcome and the summary are
recorded or neither is.

The counts: ``success_count`` generations COMPLETED, ``canceled_count`` CANCELED, and
``failure_count`` everything else in the batch (FAILED, or refused at creation).
"""

from __future__ import annotations

import uuid
from collections import Counter

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Outbox
from services.generation.lifecycle import TERMINAL, Status
from services.generation.models import batches, generations
from services.generation.store import Generation
from stylestudio.generation.v1 import events_pb2

EVENT_TYPE = "generation.batch_completed"
# Batch ids of keyed batches are derived from the user and the key, so a retried batch is the same.
_NAMESPACE = uuid.UUID("6b5f3f0e-51a8-4c57-9d1e-2a4c8f0b7d13")
_TERMINAL = {status.value for status in TERMINAL}


def batch_id_for(user_id: str, idempotency_key: str | None) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{user_id}\n{idempotency_key}") if idempotency_key else uuid.uuid4()


async def create(session: AsyncConnection, batch_id: uuid.UUID, user_id: str, size: int) -> None:
    """Records the batch; a retry of a keyed batch finds it recorded and leaves it as it is."""
    await session.execute(
        pg_insert(batches).values(id=batch_id, user_id=user_id, size=size).on_conflict_do_nothing()
    )


async def seal(outbox: Outbox, session: AsyncConnection, batch_id: uuid.UUID) -> None:
    """Every request of the batch was started or refused: its summary may now be written."""
    await session.execute(
        sa.update(batches)
        .where(batches.c.id == batch_id, batches.c.sealed_at.is_(None))
        .values(sealed_at=sa.func.now())
    )
    await _summarize_if_done(outbox, session, batch_id)


async def on_outcome(outbox: Outbox, session: AsyncConnection, generation: Generation) -> None:
    """In the transaction that recorded ``generation``'s terminal status."""
    if generation.batch_id is not None:
        await _summarize_if_done(outbox, session, generation.batch_id)


async def _summarize_if_done(outbox: Outbox, session: AsyncConnection, batch_id: uuid.UUID) -> None:
    batch = (
        await session.execute(sa.select(batches).where(batches.c.id == batch_id).with_for_update())
    ).first()
    if batch is None or batch.sealed_at is None or batch.summarized_at is not None:
        return
    members = (
        await session.execute(
            sa.select(generations.c.id, generations.c.status).where(generations.c.batch_id == batch_id)
        )
    ).all()
    if any(member.status not in _TERMINAL for member in members):
        return  # the last of them to finish writes the summary
    counts = Counter(member.status for member in members)
    succeeded, canceled = counts[Status.COMPLETED.value], counts[Status.CANCELED.value]
    await session.execute(
        sa.update(batches).where(batches.c.id == batch_id).values(summarized_at=sa.func.now())
    )
    await outbox.add(
        session,
        EVENT_TYPE,
        events_pb2.GenerationBatchCompleted(
            user_id=batch.user_id,
            batch_id=str(batch_id),
            batch_size=batch.size,
            success_count=succeeded,
            failure_count=max(batch.size - succeeded - canceled, 0),
            canceled_count=canceled,
            generation_ids=[str(member.id) for member in members],
        ),
        user_id=batch.user_id,
        event_id=batch_id,  # one batch, one event id: the usage log keeps one record of it
    )
