"""The generation workers: take a job, run the provider, store results, capture.

Jobs arrive on ``jobs.generation`` (consumer group ``generation-workers``); a job
left unacknowledged by a dead worker is claimed by another, and the guarded
PROCESSING move plus the worker's lease make sure only one worker runs a
generation at a time. Transient provider errors are retried with backoff.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

from opentelemetry import trace
from PIL import Image, UnidentifiedImageError
from sqlalchemy.ext.asyncio import AsyncConnection

from kit import retry, telemetry
from kit.errors import DependencyUnavailable, DomainError, FailedPrecondition, Reason
from kit.events import Event, EventConsumer, unpack
from kit.retry import RetryPolicy
from services.generation import events, store
from services.generation.lifecycle import Status, is_terminal
from services.generation.providers import OutputImage, ProviderError, ProviderRequest, Submission
from services.generation.saga import Generation, Saga, call
from stylestudio.files.v1 import files_pb2
from stylestudio.generation.v1 import events_pb2

log = logging.getLogger("stylestudio.generation.worker")
DEADLINE_MESSAGE = "The generation did not finish before its deadline"


def job_consumer(saga: Saga) -> EventConsumer:
    consumer = saga.runtime.consumer(group=events.WORKER_GROUP, concurrency=saga.settings.generation_workers)

    async def handle(_session: AsyncConnection, event: Event) -> None:
        # No inbox: run_job is idempotent by generation id, and the inbox's transaction would
        # hold a pooled connection for the whole provider call (workers x 2 connections
        # starve the pool). The session stays unused, so it never takes a connection.
        # The consumer's span ("process generation.job") is a child of the start's trace.
        job = unpack(event, events_pb2.GenerationJob)
        trace.get_current_span().set_attribute(telemetry.ATTR_GENERATION_ID, job.generation_id)  # type: ignore[attr-defined]
        await run_job(saga, uuid.UUID(job.generation_id), job.attempt)  # type: ignore[attr-defined]

    consumer.on(events.JOBS_STREAM, events.JOB_TYPE, handle, inbox=False)
    return consumer


async def run_job(saga: Saga, generation_id: uuid.UUID, attempt: int = 0) -> None:
    """Move one generation forward as far as it goes; safe to run again for the same id.
    ``attempt`` is the job's (store.take_for_processing: a re-sent job takes over a lapsed lease)."""
    async with saga.db.autocommit() as session:
        generation = await store.get(session, generation_id)
    if generation is None or is_terminal(generation.status) or generation.status == Status.STARTING:
        return
    if generation.resolution:
        await saga.finish(generation)
        return
    if generation.deadline <= datetime.now(UTC):
        await saga.fail(generation, Reason.PROVIDER_UNAVAILABLE, DEADLINE_MESSAGE)
        return
    if generation.prediction_id:
        await _check_prediction(saga, generation)
        return
    if (queued_for := saga.directives(generation).queued_seconds) > 0:
        await asyncio.sleep(queued_for)
    async with saga.db.transaction() as session:
        lease = saga.settings.worker_lease_seconds
        taken = await store.take_for_processing(session, generation_id, lease, attempt)
        if taken is not None:
            await events.publish_processing(saga.outbox, session, taken)
    if taken is None:  # another worker holds it
        return
    await saga.notify(taken)
    with saga.span("generation.process", taken) as span:
        span.set_attribute("stylestudio.generation.attempt", taken.attempt)
        await saga.checkpoint(taken, "after_processing")
        await _process(saga, taken)


async def _process(saga: Saga, generation: Generation) -> None:
    remaining = (generation.deadline - datetime.now(UTC)).total_seconds()
    heartbeat = asyncio.create_task(_keep_lease(saga, generation.id, asyncio.current_task()))
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            submission = await _run_provider(saga, generation)
    except TimeoutError:
        await saga.fail(generation, Reason.PROVIDER_UNAVAILABLE, DEADLINE_MESSAGE)
        return
    except asyncio.CancelledError:
        if heartbeat.done() and not heartbeat.cancelled() and heartbeat.result() is True:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return  # decided elsewhere (canceled) while the provider ran
        raise
    except ProviderError as error:
        await saga.fail(generation, error.reason, error.message)
        return
    finally:
        heartbeat.cancel()
    if submission.finished:
        await _store_and_complete(saga, generation, submission.outputs)
    else:

        async def save_prediction() -> bool:
            async with saga.db.transaction() as session:
                return await store.set_prediction(
                    session,
                    generation.id,
                    submission.prediction_id,
                    saga.settings.replicate_poll_interval_seconds,
                )

        saved = await retry.retried(save_prediction, retry.STEP, "generation.save_prediction")
        if not saved:
            async with saga.db.autocommit() as session:
                current = await store.get(session, generation.id)
            # Its own "start" webhook may have beaten this save and adopted it: nothing to do.
            # Otherwise a webhook adopted a prediction an earlier attempt created before
            # crashing, or the outcome was decided meanwhile: stop paying for this one.
            if current is None or current.prediction_id != submission.prediction_id:
                await saga.cancel_prediction(generation, submission.prediction_id)


async def _keep_lease(saga: Saga, generation_id: uuid.UUID, worker: asyncio.Task[object] | None) -> bool:
    """Renew the lease while the provider runs; stop the worker if the generation was decided elsewhere."""
    period = saga.settings.worker_lease_seconds / 3
    while True:
        await asyncio.sleep(period)
        try:
            async with saga.db.transaction() as session:
                await store.extend_lease(session, generation_id, saga.settings.worker_lease_seconds)
                current = await store.get(session, generation_id)
        except Exception as error:
            if not retry.is_unavailable(error):
                raise
            # The database is unavailable: try again next period (one or two missed renewals
            # leave the lease valid).
            log.warning("could not renew the lease", extra={"generation_id": str(generation_id)})
            continue
        if current is None or current.resolution:
            if worker is not None:
                worker.cancel()
            return True


async def _run_provider(saga: Saga, generation: Generation) -> Submission:
    inputs = list(generation.product_image_files) + list(generation.model_image_files)
    # Pinning is idempotent and reading is a read: both are done again while files is unavailable.
    contents = await retry.retried(
        partial(_pin_and_read, saga, generation, inputs), retry.STEP, "generation.read_inputs"
    )
    products = contents[: len(generation.product_image_files)]
    models = contents[len(generation.product_image_files) :]
    provider = saga.provider_for(generation)
    model = saga.catalog.models[generation.model]
    width, height = saga.catalog.output_size(generation.quality, generation.aspect_ratio)
    settings = saga.settings
    try_number = 1
    while True:
        request = ProviderRequest(
            generation_id=str(generation.id),
            prompt=generation.enhanced_prompt,
            model=model,
            style=saga.catalog.styles[generation.style],
            width=width,
            height=height,
            aspect_ratio=generation.aspect_ratio,
            num_images=generation.num_images,
            seed=generation.seed,
            negative_prompt=generation.negative_prompt,
            guidance_scale=generation.guidance_scale,
            product_images=list(products),
            model_images=list(models),
            try_number=try_number,
            directives=saga.directives(generation),
        )
        with saga.span(f"provider {provider.name}", generation) as span:
            span.set_attribute("stylestudio.generation.try", try_number)
            try:
                return await provider.submit(request)
            except ProviderError as error:
                span.set_attribute("stylestudio.generation.error", error.reason.value)
                if not error.transient or try_number >= settings.provider_max_attempts:
                    raise
        delay = RetryPolicy(
            first_delay=settings.provider_retry_backoff_seconds,
            max_delay=settings.provider_retry_backoff_max_seconds,
        ).delay(try_number)  # the platform's full jitter, bounded by provider_max_attempts
        log.info("provider failed transiently, retrying", extra={"generation_id": str(generation.id)})
        await asyncio.sleep(delay)
        try_number += 1


async def _pin_and_read(saga: Saga, generation: Generation, inputs: list[str]) -> list[bytes]:
    acquire = call(
        saga.files.AcquireFileReferences(
            files_pb2.AcquireFileReferencesRequest(
                user_id=generation.user_id, generation_id=str(generation.id), file_ids=inputs
            )
        ),
        "files",
    )
    # Pinning and reading at once (one round trip of latency instead of two): a file deleted
    # before the pin fails its read or the pin, and either failure stops the job before the provider.
    outcomes = await asyncio.gather(
        acquire, *(_read_file(saga, generation, f) for f in inputs), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes[1:]  # type: ignore[return-value]


async def _read_file(saga: Saga, generation: Generation, file_id: str) -> bytes:
    stream = saga.files.ReadFileContent(
        files_pb2.ReadFileContentRequest(user_id=generation.user_id, file_id=file_id)
    )
    chunks: list[bytes] = []

    async def collect() -> None:
        async for message in stream:
            if message.WhichOneof("payload") == "chunk":
                chunks.append(message.chunk)

    try:
        await call(collect(), "files")
    except DependencyUnavailable:
        raise  # files (or its database) is unavailable: the caller waits for it, the job stands
    except DomainError as error:
        if error.reason is Reason.NOT_FOUND:
            raise ProviderError(
                "An input file is gone", reason=Reason.PROCESSING_ERROR, transient=False
            ) from error
        raise ProviderError(error.message, reason=Reason.PROVIDER_UNAVAILABLE, transient=True) from error
    return b"".join(chunks)


def check_outputs(outputs: Sequence[OutputImage], expected: int, max_bytes: int) -> None:
    """Outputs must be as many as asked for, real images, within the size limit."""
    if len(outputs) != expected:
        raise ProviderError(
            f"The provider returned {len(outputs)} images, expected {expected}",
            reason=Reason.PROCESSING_ERROR,
            transient=False,
        )
    for output in outputs:
        if not output.content or len(output.content) > max_bytes:
            raise ProviderError(
                "The provider returned an empty or oversized image",
                reason=Reason.PROCESSING_ERROR,
                transient=False,
            )
        try:
            with Image.open(io.BytesIO(output.content)) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ProviderError(
                "The provider returned something that is not an image",
                reason=Reason.PROCESSING_ERROR,
                transient=False,
            ) from error


async def _store_and_complete(saga: Saga, generation: Generation, outputs: Sequence[OutputImage]) -> None:
    try:
        check_outputs(outputs, generation.num_images, saga.settings.max_output_bytes)
    except ProviderError as error:
        await saga.fail(generation, error.reason, error.message)
        return
    async with saga.db.autocommit() as session:
        current = await store.get(session, generation.id)
    if current is None or current.resolution:  # canceled meanwhile: do not store its images
        return
    await saga.checkpoint(generation, "before_store")
    with saga.span("generation.store_results", generation):
        results = files_pb2.StoreGenerationResultsRequest(
            user_id=generation.user_id,
            generation_id=str(generation.id),
            images=[
                files_pb2.GeneratedImage(content=o.content, content_type=o.content_type) for o in outputs
            ],
        )
        try:
            # Stored once per generation by files: asked again while files is unavailable,
            # rather than the provider's work being thrown away and done again.
            stored = await retry.retried(
                lambda: call(saga.files.StoreGenerationResults(results), "files"),
                retry.STEP,
                "generation.store_results",
            )
        except FailedPrecondition:
            # Files refuses the results of a generation whose outcome's finish discarded them
            # (canceled or failed after the check above): nothing was stored, nothing to do.
            async with saga.db.autocommit() as session:
                current = await store.get(session, generation.id)
            if current is not None and current.resolution:
                return
            raise
    await saga.checkpoint(generation, "after_store")
    if await saga.complete(generation, [file.id for file in stored.files]) is None:
        # Decided otherwise while the images were being stored (canceled, deadline): a
        # discard by that outcome's finish may have come before the store, so discard again.
        async with saga.db.autocommit() as session:
            current = await store.get(session, generation.id)
        if current is None or current.resolution != Status.COMPLETED.value:
            await saga.discard_results(generation)


async def _check_prediction(saga: Saga, generation: Generation) -> None:
    """Poll (or act on a webhook about) a prediction running at the provider."""
    with saga.span("generation.check_prediction", generation):
        try:
            submission = await saga.provider_for(generation).check(generation.prediction_id)
        except ProviderError as error:
            if error.transient:
                return  # the next poll tries again
            await saga.fail(generation, error.reason, error.message)
            return
    if submission.finished:
        await _store_and_complete(saga, generation, submission.outputs)
        return
    async with saga.db.transaction() as session:
        await store.touch(session, generation.id, saga.settings.replicate_poll_interval_seconds)
