"""The sweeper: finishes every saga that stopped half-way.

Each pass looks for starts cut short between hold and QUEUED (hold released, row
removed), generations past their deadline (FAILED, hold released), outcomes that
were decided but not carried out (finished again, idempotently), and generations
whose job was lost or whose worker died (job sent again; for predictions running
at a provider this is the poll that stands in for a lost webhook).
"""

from __future__ import annotations

import asyncio
import logging

from kit import retry
from kit.errors import Reason
from kit.logs import describe_error
from services.generation import events, store
from services.generation.saga import Generation, Saga
from services.generation.worker import DEADLINE_MESSAGE

log = logging.getLogger("stylestudio.generation.sweeper")
# A step the sweeper runs waits little for a dependency that is down: the next pass tries
# again, and one pass is not held up for a minute by an outage.
SWEEP_POLICY = retry.REQUEST


async def sweep_forever(saga: Saga) -> None:
    while True:
        try:
            await sweep_once(saga)
        except Exception:  # a pass that fails is retried at the next one; never stop sweeping
            log.exception("sweep failed")
        await asyncio.sleep(saga.settings.sweeper_interval_seconds)


async def sweep_once(saga: Saga) -> int:
    settings, limit = saga.settings, saga.settings.sweeper_batch_size
    async with saga.db.transaction() as session:
        starts = await store.abandoned_starts(session, settings.start_abandoned_after_seconds, limit)
        overdue = await store.past_deadline(session, limit)
        undone = await store.unrecorded_outcomes(session, settings.resolution_retry_after_seconds, limit)
        stalled = await store.stalled(session, settings.queued_requeue_after_seconds, limit)
    actions = (
        [_guard(saga.release_start(g), g, "abort start") for g in starts]
        + [_guard(_expire(saga, g), g, "deadline") for g in overdue]
        + [_guard(_finish(saga, g), g, "finish") for g in undone]
        + [_guard(_requeue(saga, g), g, "requeue") for g in stalled if g.id not in {o.id for o in overdue}]
    )
    await asyncio.gather(*actions)
    return len(actions)


async def _guard(action: object, generation: Generation, what: str) -> None:
    try:
        await action  # type: ignore[misc]
    except Exception as error:  # left for the next pass
        log.warning(
            "sweeper step failed",
            extra={
                "generation_id": str(generation.id),
                "step": what,
                "error": describe_error(error),
            },
        )


async def _expire(saga: Saga, generation: Generation) -> None:
    with saga.span("generation.sweep deadline", generation, join_saga=True):
        await saga.fail(generation, Reason.PROVIDER_UNAVAILABLE, DEADLINE_MESSAGE, SWEEP_POLICY)


async def _finish(saga: Saga, generation: Generation) -> None:
    with saga.span("generation.sweep finish", generation, join_saga=True):
        await saga.finish(generation, SWEEP_POLICY)


async def _requeue(saga: Saga, generation: Generation) -> None:
    with saga.span("generation.sweep requeue", generation, join_saga=True):
        async with saga.db.transaction() as session:
            lease = saga.settings.replicate_poll_interval_seconds if generation.prediction_id else None
            await store.touch(session, generation.id, lease or saga.settings.worker_lease_seconds)
            await events.enqueue_job(saga.outbox, session, generation, attempt=generation.attempt + 1)
