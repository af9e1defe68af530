"""Replicate's webhooks: verify the signature (Standard Webhooks scheme) and act once per webhook-id.

A signed body is parsed once, by pydantic (its JSON parser bounds nesting depth), into a strict
model of what the service reads: a prediction id that is not Replicate's kind, a status or an
input of the wrong JSON type, a body nested thousands of levels deep all answer VALIDATION_ERROR
(HTTP 400) naming the field, as Stripe's events do (services/billing/stripe_events.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Annotated, Any

import pydantic
from opentelemetry import trace
from pydantic import BaseModel, ConfigDict, StringConstraints
from replicate.webhook import Webhooks, WebhookSigningSecret, WebhookValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.errors import ValidationError
from kit.metrics import webhook_verification_failures
from services.generation import events, store
from services.generation.lifecycle import Status
from services.generation.saga import Generation, Saga

log = logging.getLogger("stylestudio.generation.webhooks")

PROVIDER = "replicate"
TERMINAL_PREDICTION_STATUSES = frozenset({"succeeded", "failed", "canceled"})

# Replicate's prediction ids are short lowercase base32; allow a little more, never a control character.
PredictionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
# A status the service does not know is not terminal: it is recorded and changes nothing.
PredictionStatus = Annotated[str, StringConstraints(pattern=r"^[a-z_]{0,32}$")]


class Prediction(BaseModel):
    """What a webhook's body tells the service: the prediction, its status and its input."""

    # Strict: JSON types must be Replicate's own; fields the service does not read are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    id: PredictionId
    status: PredictionStatus = ""
    input: dict[str, Any] | None = None


def verify_signature(
    headers: Mapping[str, str], body: bytes, secret: str, tolerance_seconds: int
) -> Prediction:
    """The verified prediction; VALIDATION_ERROR for a bad signature, a stale timestamp or a bad body."""
    if not secret:
        webhook_verification_failures.labels(PROVIDER).inc()
        raise ValidationError("Replicate webhooks are not configured", field="webhook-signature")
    try:
        text = body.decode("utf-8")
        Webhooks.validate(
            headers=dict(headers),
            body=text,
            secret=WebhookSigningSecret(key=secret),
            tolerance=tolerance_seconds,
        )
    except (WebhookValidationError, UnicodeDecodeError, ValueError) as error:
        webhook_verification_failures.labels(PROVIDER).inc()
        raise ValidationError(f"Invalid webhook: {error}", field="webhook-signature") from None
    try:
        return Prediction.model_validate_json(body)
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        if first["type"] == "json_invalid":
            message = "The webhook body is not a prediction (invalid or too deeply nested JSON)"
            raise ValidationError(message, field="body") from None
        if first["type"] == "model_type":  # JSON, but not an object
            raise ValidationError("The webhook body is not a prediction", field="body") from None
        raise ValidationError(
            f"The webhook body is not a prediction: {field}: {first['msg']}", field=field
        ) from None


async def handle_replicate_webhook(
    saga: Saga, headers: Mapping[str, str], body: bytes, generation_id: str = ""
) -> None:
    """Act on a verified webhook. ``generation_id`` comes from the webhook URL the service
    gave the prediction; it only matters for a prediction whose id was never saved."""
    settings = saga.settings
    prediction = verify_signature(
        headers,
        body,
        settings.replicate_webhook_secret.get_secret_value(),
        settings.replicate_webhook_tolerance_seconds,
    )
    prediction_id, status = prediction.id, prediction.status
    duplicate: Generation | None = None
    async with saga.db.transaction() as session:
        if not await store.record_webhook(session, headers["webhook-id"], prediction_id, status):
            return  # a duplicate delivery
        generation = await store.find_by_prediction(session, prediction_id)
        if generation is None:
            generation, duplicate = await _unsaved_prediction(saga, session, prediction, generation_id)
        # Only terminal statuses are final; an older "processing" arriving late changes nothing.
        if generation is not None and status in TERMINAL_PREDICTION_STATUSES:
            request_span = trace.get_current_span()
            with saga.span("generation.webhook", generation, join_saga=True) as span:
                span.add_link(request_span.get_span_context())
                await events.enqueue_job(saga.outbox, session, generation, attempt=generation.attempt)
    if duplicate is not None and status not in TERMINAL_PREDICTION_STATUSES:
        log.warning(
            "cancelling a duplicate prediction",
            extra={"generation_id": str(duplicate.id), "prediction_id": prediction_id},
        )
        await saga.cancel_prediction(duplicate, prediction_id)


async def _unsaved_prediction(
    saga: Saga, session: AsyncConnection, prediction: Prediction, generation_id: str
) -> tuple[Generation | None, Generation | None]:
    """A prediction we created but never saved (a crash between creating it and saving its
    id): adopt it if its generation has none yet, else it is a duplicate. Returns (adopted,
    duplicate). The URL's generation id is only a hint: the signed payload must carry that
    generation's seed and prompt, so a forged query string cannot attach a prediction elsewhere."""
    try:
        named = uuid.UUID(generation_id)
    except ValueError:
        return None, None
    generation = await store.get(session, named)
    inputs = prediction.input
    if (
        generation is None
        or generation.provider != "replicate"
        or generation.status != Status.PROCESSING.value
        or generation.resolution
        or not isinstance(inputs, dict)
        or inputs.get("seed") != generation.seed
        or inputs.get("prompt") != generation.enhanced_prompt
    ):
        return None, None
    prediction_id = prediction.id
    if generation.prediction_id is None and await store.set_prediction(
        session, generation.id, prediction_id, saga.settings.replicate_poll_interval_seconds
    ):
        adopted = {"generation_id": str(generation.id), "prediction_id": prediction_id}
        log.info("adopted a prediction", extra=adopted)
        return await store.get(session, generation.id), None
    # The worker saved this very prediction meanwhile (its "start" webhook raced the worker's
    # save of the create answer): the generation's own prediction, not a duplicate to cancel.
    current = await store.get(session, generation.id)
    if current is not None and current.prediction_id == prediction_id:
        return current, None
    return None, generation
