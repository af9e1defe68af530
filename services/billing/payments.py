"""Payments: Stripe through its official SDK, or offline payment intents without a key.

Offline mode keeps the production code path: a purchase is confirmed by a
Stripe-format ``payment_intent.succeeded`` event, signed with the webhook secret
and posted to the gateway's /webhooks/stripe, just as ``stripe trigger`` would:

    stylestudio payments confirm <purchase-id>          # via the gateway
    stylestudio payments fail <purchase-id> [--code card_declined]
    stylestudio payments confirm <purchase-id> --grpc   # straight to billing

(`python -m services.billing.payments ...` runs the same.)

The command reads the purchase (amount, payment intent) from the billing schema with
the service's own settings (STYLESTUDIO_SERVICE_DATABASE_URL or STYLESTUDIO_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from kit.errors import ProviderUnavailable
from services.billing.settings import BillingSettings

Row = Mapping[Any, Any]  # a purchase row (sqlalchemy RowMapping) or a plain dict
STRIPE_API_VERSION = "2024-06-20"


@dataclass(frozen=True)
class PaymentIntent:
    id: str
    client_secret: str


class Payments(Protocol):
    async def create_payment_intent(self, purchase: Row) -> PaymentIntent: ...

    async def refund(self, purchase: Row, reason: str) -> None: ...


def purchase_idempotency_key(purchase: Row) -> str:
    # Stripe keeps the key 24 hours: a retried CreatePurchase gets the same PaymentIntent back.
    return f"purchase:{purchase['id']}"


class StripePayments:
    """Stripe's REST API through ``stripe.StripeClient`` (its base URL is configurable)."""

    def __init__(self, settings: BillingSettings) -> None:
        self._client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base},
            http_client=stripe.HTTPXClient(timeout=settings.stripe_timeout_seconds),
            max_network_retries=settings.stripe_max_network_retries,
        )

    async def create_payment_intent(self, purchase: Row) -> PaymentIntent:
        params: Any = {
            "amount": purchase["amount_cents"],
            "currency": purchase["currency"],
            "metadata": {"purchase_id": str(purchase["id"]), "package_name": purchase["package_name"]},
            "automatic_payment_methods": {"enabled": True},
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params, {"idempotency_key": purchase_idempotency_key(purchase)}
            )
        except stripe.StripeError as error:
            raise _unavailable(error) from error
        return PaymentIntent(intent.id, intent.client_secret or "")

    async def refund(self, purchase: Row, reason: str) -> None:
        params: Any = {
            "payment_intent": purchase["payment_intent_id"],
            "metadata": {"purchase_id": str(purchase["id"]), "reason": reason[:500]},
        }
        try:
            await self._client.v1.refunds.create_async(
                params, {"idempotency_key": f"refund:{purchase['id']}"}
            )
        except stripe.StripeError as error:
            raise _unavailable(error) from error


def _unavailable(error: stripe.StripeError) -> ProviderUnavailable:
    # Stripe's message may echo request data; the code and status are enough for the caller.
    return ProviderUnavailable(
        "The payment provider did not accept the request; try again later",
        details={"provider": "stripe", "http_status": error.http_status or 0, "code": error.code or ""},
    )


class OfflinePayments:
    """No Stripe key: local payment intents; refunds arrive as signed ``charge.refunded`` events."""

    def __init__(self, settings: BillingSettings, deliver: Callable[[bytes, str], Awaitable[None]]) -> None:
        self._secret = settings.stripe_webhook_secret.get_secret_value()
        self._deliver = deliver

    async def create_payment_intent(self, purchase: Row) -> PaymentIntent:
        intent_id = offline_payment_intent_id(purchase["id"])
        proof = hmac.new(self._secret.encode(), intent_id.encode(), hashlib.sha256).hexdigest()[:24]
        return PaymentIntent(intent_id, f"{intent_id}_secret_{proof}")

    async def refund(self, purchase: Row, reason: str) -> None:
        payload = json.dumps(charge_refunded_event(purchase)).encode()
        await self._deliver(payload, sign_payload(payload, self._secret))


def offline_payment_intent_id(purchase_id: object) -> str:
    return f"pi_offline_{uuid.UUID(str(purchase_id)).hex}"


# --- Stripe-format events, for offline mode (and tests) ---


def sign_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header for ``payload``, computed as Stripe does."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    signature = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def stripe_event(event_type: str, data_object: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": data_object},
    }


def payment_intent_object(
    purchase: Row, status: str, failure_code: str = "", failure_message: str = ""
) -> dict[str, Any]:
    intent_id = purchase["payment_intent_id"] or offline_payment_intent_id(purchase["id"])
    succeeded = status == "succeeded"
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": purchase["amount_cents"],
        "amount_received": purchase["amount_cents"] if succeeded else 0,
        "currency": purchase["currency"],
        "status": status,
        "latest_charge": f"ch_{uuid.UUID(str(purchase['id'])).hex[:24]}",
        "metadata": {"purchase_id": str(purchase["id"]), "package_name": purchase["package_name"]},
        "last_payment_error": (
            {"code": failure_code, "message": failure_message or None, "type": "card_error"}
            if failure_code
            else None
        ),
    }


def charge_refunded_event(purchase: Row) -> dict[str, Any]:
    charge = {
        "id": f"ch_{uuid.UUID(str(purchase['id'])).hex[:24]}",
        "object": "charge",
        "amount": purchase["amount_cents"],
        "amount_refunded": purchase["amount_cents"],
        "currency": purchase["currency"],
        "payment_intent": purchase["payment_intent_id"],
        "refunded": True,
        "metadata": {"purchase_id": str(purchase["id"])},
    }
    return stripe_event("charge.refunded", charge)


# --- the command ---


async def _load_purchase(settings: BillingSettings, purchase_id: str) -> Row:
    from kit.server import command_database
    from services.billing import store

    db = command_database(settings, "billing")
    try:
        async with db.transaction() as session:
            found = await store.purchase(session, uuid.UUID(purchase_id))
    finally:
        await db.dispose()
    if found is None:
        raise SystemExit(f"purchase {purchase_id} not found")
    return dict(found)


async def _post_via_grpc(settings: BillingSettings, payload: bytes, signature: str) -> None:
    from google.api import httpbody_pb2

    from kit.clients import open_channel
    from kit.tls import TransportSecurity
    from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc

    security = TransportSecurity.from_settings(settings)
    channel = open_channel(settings.billing_addr, None, settings.rpc_deadline_seconds, security)
    try:
        body = httpbody_pb2.HttpBody(content_type="application/json", data=payload)
        await billing_pb2_grpc.BillingServiceStub(channel).HandleStripeWebhook(
            billing_pb2.HandleStripeWebhookRequest(http_body=body),
            metadata=(("stripe-signature", signature),),
        )
    finally:
        await channel.close()


def _post_via_gateway(settings: BillingSettings, payload: bytes, signature: str) -> None:
    import httpx

    response = httpx.post(
        f"http://{settings.gateway_addr}/webhooks/stripe",
        content=payload,
        headers={"Content-Type": "application/json", "Stripe-Signature": signature},
        timeout=settings.rpc_deadline_seconds,
    )
    if response.status_code != 200:
        raise SystemExit(f"the gateway answered {response.status_code}: {response.text[:500]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="stylestudio payments",
        description="Offline payments: confirm or fail a purchase with a signed Stripe event.",
    )
    parser.add_argument("action", choices=["confirm", "fail"])
    parser.add_argument("purchase_id")
    parser.add_argument("--code", default="card_declined", help="failure code for 'fail'")
    parser.add_argument(
        "--message",
        default="Your card was declined.",
        help="failure message for 'fail' (the purchase's failureReason)",
    )
    parser.add_argument("--grpc", action="store_true", help="post to the billing service, not the gateway")
    args = parser.parse_args(argv)
    settings = BillingSettings()
    if settings.is_production and not (settings.offline_payments and settings.offline_payments_enabled):
        # With Stripe, a confirmation forged here would credit tokens nobody paid for.
        raise SystemExit(
            "offline confirmations are refused in production unless offline payments are in use "
            f"and enabled ({settings.variable_of('offline_payments_enabled')}=true, no Stripe key)"
        )
    purchase = asyncio.run(_load_purchase(settings, args.purchase_id))
    if args.action == "confirm":
        event = stripe_event("payment_intent.succeeded", payment_intent_object(purchase, "succeeded"))
    else:
        failed = payment_intent_object(purchase, "requires_payment_method", args.code, args.message)
        event = stripe_event("payment_intent.payment_failed", failed)
    payload = json.dumps(event).encode()
    signature = sign_payload(payload, settings.stripe_webhook_secret.get_secret_value())
    if args.grpc:
        asyncio.run(_post_via_grpc(settings, payload, signature))
    else:
        _post_via_gateway(settings, payload, signature)
    print(f"{event['type']} {event['id']} delivered for purchase {args.purchase_id}", file=sys.stderr)


if __name__ == "__main__":
    main()
