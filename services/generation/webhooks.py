"""Replicate's webhooks: verify the signature (Standard Webhooks scheme) and act once per webhook-id."""

from __future__ import annotations

import json
from collections.abc import Mapping

from opentelemetry import trace
from replicate.webhook import Webhooks, WebhookSigningSecret, WebhookValidationError

from kit.errors import ValidationError
from services.generation import events, store
from services.generation.saga import Saga

TERMINAL_PREDICTION_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def verify_signature(headers: Mapping[str, str], body: bytes, secret: str, tolerance_seconds: int) -> dict:  # type: ignore[type-arg]
    """The verified payload; VALIDATION_ERROR for a bad signature, a stale timestamp or a bad body."""
    if not secret:
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
        raise ValidationError(f"Invalid webhook: {error}", field="webhook-signature") from None
    try:
        payload = json.loads(text)
    except ValueError:
        raise ValidationError("The webhook body is not JSON", field="body") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise ValidationError("The webhook body is not a prediction", field="body")
    return payload


async def handle_replicate_webhook(saga: Saga, headers: Mapping[str, str], body: bytes) -> None:
    settings = saga.settings
    payload = verify_signature(
        headers,
        body,
        settings.replicate_webhook_secret.get_secret_value(),
        settings.replicate_webhook_tolerance_seconds,
    )
    prediction_id, status = payload["id"], str(payload.get("status", ""))
    async with saga.db.transaction() as session:
        if not await store.record_webhook(session, headers["webhook-id"], prediction_id, status):
            return  # a duplicate delivery
        generation = await store.find_by_prediction(session, prediction_id)
        # Only terminal statuses are final; an older "processing" arriving late changes nothing.
        if generation is None or status not in TERMINAL_PREDICTION_STATUSES:
            return
        request_span = trace.get_current_span()
        with saga.span("generation.webhook", generation, join_saga=True) as span:
            span.add_link(request_span.get_span_context())
            await events.enqueue_job(saga.outbox, session, generation, attempt=generation.attempt)
