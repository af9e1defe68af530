"""Starting a generation: validate, admit, limit, price, check files, hold tokens, queue.

A full queue refuses the start before anything is counted, written or held (admission.py).
Nothing is held when any step before the hold fails; a failure after the hold
releases it. The row is written as STARTING (invisible to the user) before the
hold, so a crash between the hold and QUEUED leaves a trace the sweeper undoes.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2

from kit import retry, telemetry
from kit.auth import Caller
from kit.errors import Conflict, DependencyUnavailable, NotFound
from kit.idempotency import ensure_same_request, request_fingerprint
from services.generation import events, store
from services.generation.prompts import enhance_prompt
from services.generation.saga import Generation, Saga, call, hold_key
from services.generation.validation import MAX_SEED, GenerationRequest, validate_request
from stylestudio.billing.v1 import billing_pb2
from stylestudio.files.v1 import files_pb2
from stylestudio.generation.v1 import generation_pb2

# A request whose Idempotency-Key's first request is still starting: the client asks again
# shortly (Retry-After), and then gets that generation.
IN_PROGRESS = "A request with this Idempotency-Key is being processed; retry shortly"
IN_PROGRESS_RETRY_AFTER_SECONDS = 1.0


def parse_request(saga: Saga, request: generation_pb2.CreateGenerationRequest) -> GenerationRequest:
    parameters = request.parameters
    return validate_request(
        product_image_files=list(request.product_image_files),
        model_image_files=list(request.model_image_files),
        prompt=request.prompt,
        model=parameters.model,
        style=parameters.style,
        quality=parameters.quality,
        aspect_ratio=parameters.aspect_ratio,
        num_images=parameters.num_images,
        seed=parameters.seed if parameters.HasField("seed") else None,
        negative_prompt=parameters.negative_prompt,
        guidance_scale=parameters.guidance_scale if parameters.HasField("guidance_scale") else None,
        catalog=saga.catalog,
        settings=saga.settings,
    )


async def start_generation(
    saga: Saga,
    caller: Caller,
    request: generation_pb2.CreateGenerationRequest,
    idempotency_key: str | None,
    *,
    batch_fingerprint: str | None = None,
    batch_id: uuid.UUID | None = None,
) -> Generation:
    """Starts one generation; a batch's items pass the fingerprint of the whole batch, which
    becomes part of each item's, so a batch key reused with any other batch conflicts."""
    user_id = caller.user_id
    batch = batch_fingerprint is not None
    fingerprint = request_fingerprint(request, *([batch_fingerprint] if batch_fingerprint else []))
    if idempotency_key:
        async with saga.db.autocommit() as session:
            earlier = await store.find_by_idempotency_key(session, user_id, idempotency_key)
        if earlier is not None:
            return _replay(earlier, fingerprint)
    parsed = parse_request(saga, request)
    await saga.admission.check()  # before any count, row or hold: a refusal costs nothing
    generation_id = uuid.uuid4()
    tracer = telemetry.tracer("stylestudio.generation")
    attributes = {
        telemetry.ATTR_GENERATION_ID: str(generation_id),
        telemetry.ATTR_USER_ID: user_id,
        telemetry.ATTR_MODEL: parsed.parameters.model,
    }
    with telemetry.scrubbed_span(tracer, "generation.start", attributes=attributes) as span:
        await saga.limiter.admit(user_id, caller.plan, str(generation_id))
        try:
            token_cost = await _price_and_check_files(saga, user_id, parsed)
            values = _row(
                saga, generation_id, user_id, parsed, token_cost, idempotency_key, fingerprint, batch
            )
            values["batch_id"] = batch_id
            async with saga.db.transaction() as session:
                starting = await store.insert_starting(session, values)
            if starting is None:  # the same key raced us: answer with its generation
                await saga.limiter.give_back(user_id, str(generation_id))
                async with saga.db.autocommit() as session:
                    earlier = await store.find_by_idempotency_key(session, user_id, idempotency_key or "")
                if earlier is None:
                    raise Conflict(IN_PROGRESS, retry_after_seconds=IN_PROGRESS_RETRY_AFTER_SECONDS)
                return _replay(earlier, fingerprint)
            queued = await _hold_and_queue(saga, starting)
        except BaseException:
            await saga.limiter.give_back(user_id, str(generation_id))
            raise
        span.set_attribute(telemetry.ATTR_GENERATION_STATUS, queued.status)
    saga.admission.accepted()
    await saga.notify(queued)
    return queued


async def _price_and_check_files(saga: Saga, user_id: str, parsed: GenerationRequest) -> int:
    parameters = parsed.parameters
    price = billing_pb2.EstimateCostRequest(
        model=parameters.model,
        quality=parameters.quality,
        aspect_ratio=parameters.aspect_ratio,
        num_images=parameters.num_images,
    )
    owned = files_pb2.CheckFileOwnershipRequest(user_id=user_id, file_ids=list(parsed.input_files))
    # Reads: asked again (briefly) when billing or files cannot answer.
    estimate, ownership = await asyncio.gather(
        retry.retried(lambda: call(saga.billing.EstimateCost(price), "billing"), retry.REQUEST, "estimate"),
        retry.retried(
            lambda: call(saga.files.CheckFileOwnership(owned), "files"), retry.REQUEST, "ownership"
        ),
    )
    if ownership.missing_ids:
        raise NotFound(
            "Input file not found",
            details={
                "field": _field_of(parsed, ownership.missing_ids[0]),
                "file_id": ownership.missing_ids[0],
            },
        )
    return int(estimate.tokens)


def _field_of(parsed: GenerationRequest, file_id: str) -> str:
    return "product_image_files" if file_id in parsed.product_image_files else "model_image_files"


async def _hold_and_queue(saga: Saga, starting: Generation) -> Generation:
    generation_id, user_id, token_cost = starting.id, starting.user_id, starting.token_cost
    try:
        expires_in = duration_pb2.Duration()
        expires_in.FromTimedelta(
            timedelta(
                seconds=saga.settings.generation_deadline_seconds + saga.settings.hold_expiry_margin_seconds
            )
        )
        reserve = billing_pb2.ReserveTokensRequest(
            user_id=user_id,
            amount=token_cost,
            generation_id=str(generation_id),
            idempotency_key=hold_key(generation_id),
            expires_in=expires_in,
            reason="AI image generation",
        )
        # Keyed by the generation: a reservation that billing could not answer is asked again
        # (briefly; past that the client gets 503 with Retry-After).
        hold = await retry.retried(
            lambda: call(saga.billing.ReserveTokens(reserve), "billing"), retry.REQUEST, "reserve tokens"
        )
    except BaseException:
        async with saga.db.transaction() as session:
            await store.delete_starting(session, generation_id)
        raise
    await saga.checkpoint(starting, "after_hold")
    try:
        async with saga.db.transaction() as session:
            queued = await store.mark_queued(session, generation_id, hold.id)
            if queued is not None:
                await events.publish_started(saga.outbox, session, queued)
                await events.enqueue_job(saga.outbox, session, queued)
        if queued is None:
            # Slower than start_abandoned_after_seconds: the sweeper undid it (hold released).
            raise DependencyUnavailable(
                "generation", "The generation could not be started in time; try again"
            )
        # The start's call may still be cancelled here (the caller gone) or while it commits:
        # release_start then finds the generation QUEUED and leaves its hold to the saga.
        await saga.checkpoint(queued, "after_queue")
    except BaseException:
        await saga.release_start(starting)  # undoes nothing once QUEUED
        raise
    return queued


def _row(
    saga: Saga,
    generation_id: uuid.UUID,
    user_id: str,
    parsed: GenerationRequest,
    token_cost: int,
    idempotency_key: str | None,
    fingerprint: str,
    batch: bool,
) -> dict[str, object]:
    parameters = parsed.parameters
    carrier = telemetry.inject_trace_context()
    return {
        "id": generation_id,
        "user_id": user_id,
        "prompt": parsed.prompt,
        "enhanced_prompt": enhance_prompt(
            parsed.prompt,
            saga.catalog.styles[parameters.style],
            with_model_images=bool(parsed.model_image_files),
        ),
        "model": parameters.model,
        "style": parameters.style,
        "quality": parameters.quality,
        "aspect_ratio": parameters.aspect_ratio,
        "num_images": parameters.num_images,
        "seed": parameters.seed if parameters.seed is not None else random.randint(0, MAX_SEED),
        "seed_requested": parameters.seed is not None,
        "negative_prompt": parameters.negative_prompt,
        "guidance_scale": parameters.guidance_scale,
        "product_image_files": list(parsed.product_image_files),
        "model_image_files": list(parsed.model_image_files),
        "token_cost": token_cost,
        "idempotency_key": idempotency_key or None,
        "request_hash": fingerprint,
        "batch": batch,
        "trace_id": telemetry.current_trace_id(),
        "traceparent": carrier.get("traceparent", ""),
        "provider": saga.catalog.models[parameters.model].provider,
        "deadline": datetime.now(UTC) + timedelta(seconds=saga.settings.generation_deadline_seconds),
    }


def _replay(earlier: Generation, fingerprint: str) -> Generation:
    ensure_same_request(earlier.idempotency_key or "", earlier.request_hash, fingerprint)
    if earlier.status == "STARTING":
        raise Conflict(IN_PROGRESS, retry_after_seconds=IN_PROGRESS_RETRY_AFTER_SECONDS)
    return earlier


async def batch_conflicts(saga: Saga, user_id: str, item_keys: list[str], fingerprints: list[str]) -> bool:
    """True if any of a batch's item keys was first used by another batch."""
    async with saga.db.autocommit() as session:
        earlier = await store.find_by_idempotency_keys(session, user_id, item_keys)
    expected = dict(zip(item_keys, fingerprints, strict=True))
    return any(row.request_hash != expected[row.idempotency_key] for row in earlier)
