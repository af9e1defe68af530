"""What the generation service publishes (events.generation) and its job queue (jobs.generation)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Outbox
from services.generation.lifecycle import Status
from services.generation.store import Generation
from stylestudio.generation.v1 import events_pb2, resources_pb2

JOBS_STREAM = "jobs.generation"
JOB_TYPE = "generation.job"
WORKER_GROUP = "generation-workers"


async def enqueue_job(
    outbox: Outbox, session: AsyncConnection, generation: Generation, attempt: int = 1
) -> None:
    job = events_pb2.GenerationJob(
        generation_id=str(generation.id), user_id=generation.user_id, attempt=attempt
    )
    job.deadline.FromDatetime(generation.deadline)
    await outbox.add(session, JOB_TYPE, job, user_id=generation.user_id, stream=JOBS_STREAM)


async def publish_started(outbox: Outbox, session: AsyncConnection, generation: Generation) -> None:
    await outbox.add(
        session,
        "generation.started",
        events_pb2.GenerationStarted(
            user_id=generation.user_id,
            generation_id=str(generation.id),
            model=generation.model,
            style=generation.style,
            quality=generation.quality,
            aspect_ratio=generation.aspect_ratio,
            num_images=generation.num_images,
            token_cost=generation.token_cost,
            batch=generation.batch,
        ),
        user_id=generation.user_id,
    )


async def publish_processing(outbox: Outbox, session: AsyncConnection, generation: Generation) -> None:
    await outbox.add(
        session,
        "generation.processing",
        events_pb2.GenerationProcessing(
            user_id=generation.user_id, generation_id=str(generation.id), attempt=generation.attempt
        ),
        user_id=generation.user_id,
    )


async def publish_outcome(
    outbox: Outbox, session: AsyncConnection, generation: Generation, previous: Status
) -> None:
    """The terminal event: completed, failed or canceled."""
    user_id, generation_id = generation.user_id, str(generation.id)
    status = Status(generation.status)
    if status is Status.COMPLETED:
        event: object = events_pb2.GenerationCompleted(
            user_id=user_id,
            generation_id=generation_id,
            processing_time_ms=generation.processing_time_ms or 0,
            token_cost=generation.token_cost,
            model=generation.model,
            style=generation.style,
            result_file_ids=list(generation.result_image_files),
        )
    elif status is Status.FAILED:
        event = events_pb2.GenerationFailed(
            user_id=user_id,
            generation_id=generation_id,
            reason=generation.error_reason or "",
            model=generation.model,
            style=generation.style,
            processing_time_ms=generation.processing_time_ms or 0,
            message=failure_message(generation),
        )
    else:
        event = events_pb2.GenerationCanceled(
            user_id=user_id,
            generation_id=generation_id,
            previous_status=resources_pb2.GenerationStatus.Value(previous.value),
        )
    await outbox.add(session, f"generation.{status.value.lower()}", event, user_id=user_id)  # type: ignore[arg-type]


def failure_message(generation: Generation) -> str:
    """The generation's error message for the usage log: the user's prompt never goes with it."""
    message = generation.error_message or ""
    for words in (generation.prompt, generation.enhanced_prompt):
        if words and words in message:
            message = message.replace(words, "[prompt]")
    return message
