"""The generation saga's shared steps: deciding an outcome and carrying it out.

Every step is keyed by the generation id: the hold is reserved, captured and
released with keys derived from it, results are stored once per generation by
files, and the database moves are guarded updates. So any actor (the worker, a
cancel, a webhook, the sweeper after a crash) may run a step again safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Iterator, Sequence
from functools import partial
from typing import TypeVar

import grpc
from opentelemetry import trace

from kit import retry, telemetry
from kit.errors import DomainError, FailedPrecondition, NotFound, Reason, from_rpc_error
from kit.retry import RetryPolicy
from kit.server import Runtime
from services.generation import batches, events, faults, monitoring, store
from services.generation.admission import QueueAdmission
from services.generation.catalog import Catalog
from services.generation.lifecycle import Status, check_cancelable
from services.generation.providers import Provider
from services.generation.rate_limit import HourlyLimiter
from services.generation.settings import GenerationSettings
from services.generation.updates import UpdateHub
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.files.v1 import files_pb2, files_pb2_grpc

log = logging.getLogger("stylestudio.generation.saga")
T = TypeVar("T")
Generation = store.Generation


async def call(rpc: Awaitable[T], service: str) -> T:
    """Await an RPC to ``service``; its failure comes back as the domain error it carried, or
    as DependencyUnavailable(service) when the call failed in transport."""
    try:
        return await rpc
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, service) from error


def hold_key(generation_id: object) -> str:
    return f"generation:{generation_id}:hold"


def capture_key(generation_id: object) -> str:
    return f"generation:{generation_id}:capture"


class Saga:
    def __init__(
        self,
        runtime: Runtime,
        settings: GenerationSettings,
        providers: dict[str, Provider],
    ) -> None:
        self.runtime, self.settings = runtime, settings
        self.db, self.redis, self.outbox = runtime.db, runtime.redis, runtime.outbox
        self.catalog = Catalog.from_settings(settings)
        self.providers = providers
        self.limiter = HourlyLimiter(
            runtime.redis,
            settings.redis_prefix,
            settings.hourly_generation_limits,
            settings.rate_limit_window_seconds,
        )
        self.admission = QueueAdmission(runtime.db, settings)
        self.tracer = telemetry.tracer("stylestudio.generation")
        self.updates = UpdateHub(runtime.redis, f"{settings.redis_prefix}:generation:updates:")

    @property
    def billing(self) -> billing_pb2_grpc.BillingServiceStub:
        return self.runtime.clients.stub("billing", billing_pb2_grpc.BillingServiceStub)

    @property
    def files(self) -> files_pb2_grpc.FilesServiceStub:
        return self.runtime.clients.stub("files", files_pb2_grpc.FilesServiceStub)

    def provider_for(self, generation: Generation) -> Provider:
        return self.providers[generation.provider]

    def directives(self, generation: Generation) -> faults.Directives:
        return faults.parse_directives(generation.prompt, self.settings.fault_injection)

    async def checkpoint(self, generation: Generation, step: str) -> None:
        await faults.checkpoint(
            self.redis, self.settings.redis_prefix, generation.id, step, self.directives(generation)
        )

    # --- progress ------------------------------------------------------------------------

    async def notify(self, generation: Generation) -> None:
        """Wake the watchers of this generation (they re-read it; a lost message costs a poll)."""
        try:
            await self.updates.publish(generation.id, generation.status)
        except Exception as error:  # progress is best effort; the state is already committed
            log.warning("could not notify watchers", extra={"error": type(error).__name__})

    # --- tracing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def span(self, name: str, generation: Generation, *, join_saga: bool = False) -> Iterator[trace.Span]:
        """A span about one generation; ``join_saga`` parents it on the saga's root (sweeper, webhook)."""
        context = None
        if join_saga and generation.traceparent:
            context = telemetry.extract_trace_context(generation.traceparent)
        attributes = {
            telemetry.ATTR_GENERATION_ID: str(generation.id),
            telemetry.ATTR_USER_ID: generation.user_id,
            telemetry.ATTR_MODEL: generation.model,
            telemetry.ATTR_GENERATION_STATUS: generation.status,
        }
        with telemetry.scrubbed_span(self.tracer, name, context=context, attributes=attributes) as span:
            yield span

    # --- outcomes ------------------------------------------------------------------------

    async def fail(
        self, generation: Generation, reason: Reason | str, message: str, policy: RetryPolicy = retry.STEP
    ) -> Generation | None:
        """Decide FAILED (if nobody decided yet) and give the tokens back."""

        async def decide() -> Generation | None:
            async with self.db.transaction() as session:
                return await store.decide(
                    session, generation.id, Status.FAILED, reason=str(reason), message=message
                )

        decided = await retry.retried(decide, policy, "generation.decide")
        if decided is None:
            return None
        log.info("generation failing", extra={"generation_id": str(generation.id), "reason": str(reason)})
        return await self.finish(decided, policy)

    async def complete(self, generation: Generation, result_files: Sequence[str]) -> Generation | None:
        async def decide() -> Generation | None:
            async with self.db.transaction() as session:
                return await store.decide(session, generation.id, Status.COMPLETED, result_files=result_files)

        decided = await retry.retried(decide, retry.STEP, "generation.decide")
        if decided is None:
            return None
        await self.checkpoint(decided, "after_decide")
        return await self.finish(decided)

    async def cancel(self, generation_id: uuid.UUID, user_id: str) -> Generation:
        async with self.db.transaction() as session:
            current = await store.get_visible(session, generation_id, user_id)
            if current is None:
                raise NotFound("Generation not found", details={"id": str(generation_id)})
            resolution = Status(current.resolution) if current.resolution else None
            if not check_cancelable(Status(current.status), resolution):
                return current
            decided = await store.decide(
                session, generation_id, Status.CANCELED, message="Canceled by the user"
            )
        if decided is None:  # decided by someone else in between: answer for that outcome
            return await self.cancel(generation_id, user_id)
        with self.span("generation.cancel", decided):
            # In the client's call: a short wait at most; the sweeper carries out the rest.
            finished = await self.finish(decided, retry.REQUEST)
        return finished or decided

    async def finish(self, generation: Generation, policy: RetryPolicy = retry.STEP) -> Generation | None:
        """Carry out a decided outcome: capture or release the hold, then record the status.
        Every part is idempotent, so while a dependency (billing, files, the database) is
        unavailable the whole step is run again per ``policy``."""
        return await retry.retried(partial(self._finish_once, generation), policy, "generation.finish")

    async def _finish_once(self, generation: Generation) -> Generation | None:
        outcome = Status(generation.resolution)
        with self.span(f"generation.finish {outcome.value.lower()}", generation):
            if outcome is Status.CANCELED and generation.prediction_id:
                await self.cancel_prediction(generation, generation.prediction_id)
            # Independent and idempotent: the hold and the input files' pins settled at once.
            settling: list[Awaitable[object]] = [
                call(
                    self.files.ReleaseFileReferences(
                        files_pb2.ReleaseFileReferencesRequest(generation_id=str(generation.id))
                    ),
                    "files",
                )
            ]
            if generation.hold_id:
                settling.append(self._settle_hold(generation, outcome))
            if outcome is not Status.COMPLETED and generation.status == Status.PROCESSING.value:
                # Canceled or failed while its results may have been stored: they are not the user's.
                settling.append(self.discard_results(generation))
            for result in await asyncio.gather(*settling, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            await self.checkpoint(generation, "after_billing")
            previous = Status(generation.status)
            async with self.db.transaction() as session:
                recorded = await store.record_outcome(session, generation.id)
                if recorded is not None:
                    await events.publish_outcome(self.outbox, session, recorded, previous)
                    await batches.on_outcome(self.outbox, session, recorded)
        if recorded is not None:
            monitoring.record_outcome(recorded)
            await self.notify(recorded)
        return recorded

    async def discard_results(self, generation: Generation) -> None:
        """Deletes the images stored for a generation that did not complete (idempotent)."""
        await call(
            self.files.DiscardGenerationResults(
                files_pb2.DiscardGenerationResultsRequest(
                    user_id=generation.user_id, generation_id=str(generation.id)
                )
            ),
            "files",
        )

    async def _settle_hold(self, generation: Generation, outcome: Status) -> None:
        if outcome is Status.COMPLETED:
            try:
                await call(
                    self.billing.CaptureHold(
                        billing_pb2.CaptureHoldRequest(
                            hold_id=generation.hold_id, idempotency_key=capture_key(generation.id)
                        )
                    ),
                    "billing",
                )
            except FailedPrecondition:
                # Only an expired hold refuses a capture: the sweeper was down past the deadline.
                log.error("hold expired before capture", extra={"generation_id": str(generation.id)})
            return
        reason = f"generation {outcome.value.lower()}"
        if generation.error_reason:
            reason += f": {generation.error_reason}"
        await call(
            self.billing.ReleaseHold(
                billing_pb2.ReleaseHoldRequest(hold_id=generation.hold_id, reason=reason)
            ),
            "billing",
        )

    async def cancel_prediction(self, generation: Generation, prediction_id: str) -> None:
        """Best effort: a prediction whose result will not be used is stopped at the provider."""
        try:
            await self.provider_for(generation).cancel(prediction_id)
        except Exception as error:  # the outcome stands either way; the provider's result is ignored
            log.warning(
                "could not cancel prediction",
                extra={"generation_id": str(generation.id), "error": type(error).__name__},
            )

    async def release_start(self, generation: Generation) -> None:
        """Undo a start that did not reach QUEUED: the hold (if any) back, the row and the count gone.

        Only while the generation is still STARTING, its row locked meanwhile: a start whose
        queueing committed (its call cancelled as it committed, say) owns its hold, which the
        saga captures or releases; releasing it here left a COMPLETED generation uncapturable."""
        with self.span("generation.abort_start", generation, join_saga=True):
            async with self.db.transaction() as session:
                if not await store.lock_starting(session, generation.id):
                    return  # queued after all, or already undone
                await self._release_start_hold(generation)
                await store.delete_starting(session, generation.id)
            await self.limiter.give_back(generation.user_id, str(generation.id))

    async def _release_start_hold(self, generation: Generation) -> None:
        try:
            hold = await call(
                self.billing.ReserveTokens(
                    billing_pb2.ReserveTokensRequest(
                        user_id=generation.user_id,
                        amount=generation.token_cost,
                        generation_id=str(generation.id),
                        idempotency_key=hold_key(generation.id),
                        reason="generation start abandoned",
                    )
                ),
                "billing",
            )
        except DomainError as error:
            if error.reason is not Reason.INSUFFICIENT_TOKENS:
                raise
        else:
            # Reserving with the start's key returns the start's hold if it got one.
            await call(
                self.billing.ReleaseHold(
                    billing_pb2.ReleaseHoldRequest(hold_id=hold.id, reason="generation start abandoned")
                ),
                "billing",
            )
