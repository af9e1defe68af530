"""Stripe webhooks as the load sends them, and as a fault injector re-delivers them.

Offline payments (no Stripe key) complete a purchase when a ``payment_intent.succeeded``
event signed with the webhook secret reaches ``POST /webhooks/stripe``: the load builds
that event from the purchase the API returned, signs it with billing's own signer
(services/billing/payments.py), and keeps the exact body in ``webhooks.jsonl`` so it can be
delivered again, late and out of order, re-signed with a fresh timestamp.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from services.billing.payments import payment_intent_object, sign_payload, stripe_event
from services.billing.settings import BillingSettings

STRIPE_WEBHOOK_ROUTE = "/webhooks/stripe"
# The environment variable the load reads the secret from (never a command-line argument).
WEBHOOK_SECRET_ENV = "STYLESTUDIO_STRIPE_WEBHOOK_SECRET"


def development_webhook_secret() -> str:
    """The secret `make run` and the test platforms verify with (development only)."""
    default = BillingSettings.model_fields["stripe_webhook_secret"].default
    return str(default.get_secret_value())


def sign_stripe_event(payload: str, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value of ``payload`` signed at ``timestamp`` (unix seconds)."""
    return sign_payload(payload.encode(), secret, timestamp)


def payment_succeeded_payload(purchase: Mapping[str, Any]) -> str:
    """The body of a ``payment_intent.succeeded`` event for a purchase as the REST API returns it."""
    row = {
        "id": purchase["id"],
        "payment_intent_id": purchase.get("paymentIntentId", ""),
        "amount_cents": int(purchase["amountCents"]),
        "currency": purchase["currency"],
        "package_name": purchase["packageName"],
    }
    return json.dumps(stripe_event("payment_intent.succeeded", payment_intent_object(row, "succeeded")))


def webhook_headers(payload: str, secret: str, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"Content-Type": "application/json", "Stripe-Signature": sign_stripe_event(payload, secret, stamp)}
