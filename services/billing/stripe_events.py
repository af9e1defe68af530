"""Stripe webhook events: verified with the stripe SDK, then parsed into validated models.

Only a signed body is parsed, and it is parsed once, by pydantic (its JSON parser bounds
nesting depth, so a 5,000-level body is refused, never a stack overflow), into strict
models: a string where Stripe sends an integer, an id with a control character, a
negative or absurd amount, all answer VALIDATION_ERROR (HTTP 400) naming the field, and
nothing reaches the database that the models did not let through.

Event types the service acts on have a model for their ``data.object``; the others are
recorded by id and type only, their object kept as parsed JSON and never read.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import pydantic
import stripe
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kit.errors import ValidationError
from kit.metrics import webhook_verification_failures

PROVIDER = "stripe"

# Stripe's ids (evt_..., pi_..., ch_...) are ASCII letters, digits and underscores.
StripeId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,255}$")]
EventType = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.]{1,128}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]
# Stripe's largest charge is 8 digits in the smallest currency unit; anything past 12 is not Stripe.
Amount = Annotated[int, Field(ge=0, le=999_999_999_999)]
MetadataKey = Annotated[str, StringConstraints(max_length=40)]
MetadataValue = Annotated[str, StringConstraints(max_length=500)]
ErrorCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{0,100}$")]
# What Stripe tells the customer ("Your card was declined."): one line of printable text.
ErrorMessage = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{0,500}$")]

M = TypeVar("M", bound=BaseModel)

PAYMENT_INTENT_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed")
CHARGE_EVENTS = ("charge.refunded",)


class _StripeModel(BaseModel):
    # Strict: JSON types must be Stripe's own ("100" is not an amount); unknown fields ignored.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class PaymentError(_StripeModel):
    code: ErrorCode | None = None
    decline_code: ErrorCode | None = None
    message: ErrorMessage | None = None


class PaymentIntent(_StripeModel):
    id: StripeId
    object: Literal["payment_intent"] = "payment_intent"
    amount: Amount = 0
    # What was actually captured; a success with less than the purchase's price credits nothing.
    amount_received: Amount = 0
    currency: Currency | None = None
    metadata: dict[MetadataKey, MetadataValue] = {}
    last_payment_error: PaymentError | None = None


class Charge(_StripeModel):
    id: StripeId
    object: Literal["charge"] = "charge"
    amount: Amount = 0
    amount_refunded: Amount = 0
    currency: Currency | None = None
    payment_intent: StripeId | None = None
    refunded: bool = False
    metadata: dict[MetadataKey, MetadataValue] = {}


class _EventData(_StripeModel):
    object: dict[str, Any]


class _Envelope(_StripeModel):
    id: StripeId
    type: EventType
    data: _EventData


class StripeEvent(_StripeModel):
    id: str
    type: str
    # None for event types the service does not act on.
    object: PaymentIntent | Charge | None

    @property
    def purchase_id(self) -> str:
        return self.object.metadata.get("purchase_id", "") if self.object is not None else ""

    @property
    def payment_intent_id(self) -> str | None:
        """The PaymentIntent the event is about (a charge's, for charge events)."""
        if isinstance(self.object, PaymentIntent):
            return self.object.id
        if isinstance(self.object, Charge):
            return self.object.payment_intent
        return None


def verified_event(payload: bytes, signature: str, secret: str, tolerance_seconds: int) -> StripeEvent:
    """The event in ``payload`` once its ``Stripe-Signature`` checks out; ValidationError otherwise."""
    try:
        _verify(payload, signature, secret, tolerance_seconds)
    except ValidationError:
        webhook_verification_failures.labels(PROVIDER).inc()
        raise
    envelope = _parse(_Envelope, payload, "")
    model: type[PaymentIntent | Charge] | None = (
        PaymentIntent
        if envelope.type in PAYMENT_INTENT_EVENTS
        else Charge
        if envelope.type in CHARGE_EVENTS
        else None
    )
    data_object = None if model is None else _parse(model, envelope.data.object, "data.object.")
    return StripeEvent(id=envelope.id, type=envelope.type, object=data_object)


def _verify(payload: bytes, signature: str, secret: str, tolerance_seconds: int) -> None:
    if not signature:
        raise ValidationError("Missing Stripe-Signature header", field="stripe-signature")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("The body is not a Stripe event", field="body") from None
    try:
        stripe.WebhookSignature.verify_header(text, signature, secret, tolerance_seconds)
    except stripe.SignatureVerificationError:
        raise ValidationError(
            "Stripe signature verification failed (bad signature or stale timestamp)",
            field="stripe-signature",
        ) from None


def _parse(model: type[M], value: bytes | dict[str, Any], prefix: str) -> M:
    try:
        if isinstance(value, bytes):
            return model.model_validate_json(value)
        return model.model_validate(value)
    except pydantic.ValidationError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        field = prefix + ".".join(str(part) for part in first["loc"])
        if first["type"] == "json_invalid":
            message = "The body is not a Stripe event (invalid or too deeply nested JSON)"
            raise ValidationError(message, field="body") from None
        raise ValidationError(
            f"The Stripe event is not valid: {field or 'body'}: {first['msg']}", field=field or "body"
        ) from None
