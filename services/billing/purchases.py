"""Buying token packages: purchases, Stripe webhooks, refunds.

A purchase is credited by Stripe's word only: the ``payment_intent.succeeded``
webhook, verified over the raw bytes. Every event id is recorded in the same
transaction as its effect, so a duplicate delivery does nothing and a failed one is
retried by Stripe with nothing half done. Order does not matter: a failure after
a success leaves the credit alone, a success after a refund credits nothing.
"""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kit import audit, paging
from kit.db import Database
from kit.errors import FailedPrecondition, NotFound, ValidationError
from kit.events import Outbox
from kit.idempotency import IdempotencyKeyReused
from services.billing import events, store
from services.billing.ledger import credit_wallet, debit_available
from services.billing.models import PURCHASES_ACCOUNT, REFUNDS_ACCOUNT
from services.billing.payments import OfflinePayments, Payments, StripePayments
from services.billing.pricing import PriceList
from services.billing.settings import BillingSettings
from services.billing.stripe_events import Charge, PaymentIntent, StripeEvent, verified_event

log = logging.getLogger("stylestudio.billing.purchases")

Row = store.Row
# failure_code of a purchase whose PaymentIntent succeeded for less than its price, and its message.
UNDERPAID = "underpaid"
UNDERPAID_MESSAGE = "The payment received does not cover the package's price."
# The message of a failure Stripe gave no message for.
PAYMENT_FAILED_MESSAGE = "The payment failed."


class Purchases:
    def __init__(self, db: Database, outbox: Outbox, settings: BillingSettings, prices: PriceList) -> None:
        self.db, self.outbox, self.settings, self.prices = db, outbox, settings, prices
        self.payments: Payments = (
            OfflinePayments(settings, self.handle_webhook)
            if settings.offline_payments
            else StripePayments(settings)
        )

    async def create(self, user_id: str, package_name: str, idempotency_key: str) -> tuple[Row, str]:
        """A PENDING purchase and its PaymentIntent's client secret; the same key, the same purchase."""
        package = self.prices.package(package_name)
        key = idempotency_key or str(uuid.uuid4())
        async with self.db.transaction() as session:
            purchase = await store.insert_purchase(
                session,
                user_id=user_id,
                package_name=package.name,
                tokens=package.tokens,
                amount_cents=package.price_cents,
                currency=package.currency,
                idempotency_key=key,
            )
            if purchase is None:
                purchase = await store.purchase_by_key(session, user_id, key)
                assert purchase is not None
                if purchase["package_name"] != package.name:  # the package is the whole request
                    raise IdempotencyKeyReused(key)
        # Outside the transaction: no row lock is held while Stripe answers. If Stripe fails the
        # purchase stays PENDING without an intent and a retry with the same key completes it.
        intent = await self.payments.create_payment_intent(purchase)
        if purchase["payment_intent_id"] != intent.id:
            async with self.db.transaction() as session:
                await store.attach_payment_intent(session, purchase["id"], intent.id)
                purchase = await store.purchase(session, purchase["id"])
                assert purchase is not None
        return purchase, intent.client_secret

    async def page(self, user_id: str, before: paging.Cursor | None, limit: int) -> list[Row]:
        async with self.db.transaction() as session:
            return await store.purchases_page(session, user_id, before, limit)

    async def users_purchase(self, user_id: str, purchase_id: str) -> Row:
        """One of the user's purchases; another user's is NotFound, like one that does not exist."""
        parsed = _purchase_uuid(purchase_id)
        if parsed is None:
            raise ValidationError("id is not a purchase id", field="id")
        async with self.db.transaction() as session:
            purchase = await store.purchase(session, parsed)
        if purchase is None or purchase["user_id"] != user_id:
            raise NotFound(f"Purchase {purchase_id} not found", details={"purchase_id": purchase_id})
        return purchase

    async def refund(self, purchase_id: str, reason: str) -> Row:
        """Asks Stripe to refund a COMPLETED purchase; the tokens go back on ``charge.refunded``."""
        parsed = _purchase_uuid(purchase_id)
        async with self.db.transaction() as session:
            purchase = await store.purchase(session, parsed) if parsed else None
        if purchase is None:
            raise NotFound(f"Purchase {purchase_id} not found", details={"purchase_id": purchase_id})
        if purchase["status"] != "COMPLETED":
            raise FailedPrecondition(
                f"Only COMPLETED purchases can be refunded; this one is {purchase['status']}",
                details={"purchase_id": purchase_id, "status": purchase["status"]},
            )
        await self.payments.refund(purchase, reason or "requested by an admin")
        async with self.db.transaction() as session:
            if reason:
                await store.update_purchase(session, purchase["id"], refund_reason=reason)
            await audit.record(
                self.outbox,
                session,
                audit.REFUND_REQUESTED,
                target=f"{audit.user_target(purchase['user_id'])}/purchases/{purchase['id']}",
                details={"tokens": purchase["tokens"], "amountCents": purchase["amount_cents"]},
            )
            refreshed = await store.purchase(session, purchase["id"])
        assert refreshed is not None
        return refreshed

    # --- webhooks ---

    async def handle_webhook(self, payload: bytes, signature: str) -> None:
        s = self.settings
        event = verified_event(
            payload, signature, s.stripe_webhook_secret.get_secret_value(), s.stripe_webhook_tolerance_seconds
        )
        async with self.db.transaction() as session:
            if not await store.record_stripe_event(session, event.id, event.type, None, "received"):
                log.info("duplicate stripe event ignored", extra={"stripe_event_id": event.id})
                return
            purchase = await self._purchase_of(session, event)
            outcome = await self._apply(session, event, purchase)
            purchase_id = None if purchase is None else purchase["id"]
            await store.set_stripe_event_outcome(session, event.id, outcome, purchase_id)
        log.info("stripe event", extra={"stripe_event_id": event.id, "type": event.type, "outcome": outcome})

    async def _apply(self, session: AsyncConnection, event: StripeEvent, purchase: Row | None) -> str:
        if event.object is None:
            return "ignored: event type not handled"
        if purchase is None:
            log.warning("stripe event for an unknown purchase", extra={"stripe_event_id": event.id})
            return "ignored: unknown purchase"
        if event.payment_intent_id != purchase["payment_intent_id"]:
            # Metadata is the customer-facing side's to set; only the PaymentIntent this service
            # created for the purchase can pay for it (or fail, or refund it).
            log.error(
                "stripe event's payment intent is not the purchase's",
                extra={"stripe_event_id": event.id, "purchase_id": str(purchase["id"])},
            )
            return "ignored: payment intent is not the purchase's"
        if isinstance(event.object, PaymentIntent):
            if event.type == "payment_intent.succeeded":
                return await self._succeeded(session, purchase, event.object)
            return await self._failed(session, purchase, event.object)
        return await self._refunded(session, purchase, event.object)

    async def _purchase_of(self, session: AsyncConnection, event: StripeEvent) -> Row | None:
        """The purchase named in the object's metadata, else the one holding its PaymentIntent."""
        parsed = _purchase_uuid(event.purchase_id)
        if parsed is not None:
            return await store.purchase(session, parsed, for_update=True)
        intent = event.payment_intent_id
        return await store.purchase_by_payment_intent(session, intent) if intent else None

    async def _succeeded(self, session: AsyncConnection, purchase: Row, intent: PaymentIntent) -> str:
        if purchase["status"] not in ("PENDING", "FAILED"):
            return f"ignored: purchase already {purchase['status']}"
        if intent.currency != purchase["currency"] or intent.amount_received < purchase["amount_cents"]:
            # The package is what was bought: less money than its price buys nothing (see docs/billing.md).
            log.error(
                "payment does not cover the purchase",
                extra={"purchase_id": str(purchase["id"]), "amount_received": intent.amount_received},
            )
            await self._mark_failed(session, purchase, UNDERPAID, UNDERPAID_MESSAGE)
            return f"underpaid: received {intent.amount_received} {intent.currency or ''}".rstrip()
        await credit_wallet(
            session,
            purchase["user_id"],
            purchase["tokens"],
            kind="PURCHASE",
            source=PURCHASES_ACCOUNT,
            key=f"purchase:{purchase['id']}:credit",
            reason=f"Purchase of the {purchase['package_name']} package",
            purchase_id=purchase["id"],
        )
        completed = await store.update_purchase(
            session,
            purchase["id"],
            status="COMPLETED",
            failure_code=None,
            failure_message=None,
            completed_at=sa.func.now(),
        )
        await events.purchase_completed(self.outbox, session, completed)
        return "credited"

    async def _failed(self, session: AsyncConnection, purchase: Row, intent: PaymentIntent) -> str:
        if purchase["status"] != "PENDING":
            return f"ignored: purchase already {purchase['status']}"
        error = intent.last_payment_error
        code = (error.decline_code or error.code) if error is not None else None
        message = error.message if error is not None else None
        await self._mark_failed(
            session, purchase, code or "payment_failed", message or PAYMENT_FAILED_MESSAGE
        )
        return "failed"

    async def _mark_failed(self, session: AsyncConnection, purchase: Row, code: str, message: str) -> None:
        failed = await store.update_purchase(
            session, purchase["id"], status="FAILED", failure_code=code, failure_message=message
        )
        if purchase["status"] != "FAILED":
            await events.purchase_failed(self.outbox, session, failed)

    async def _refunded(self, session: AsyncConnection, purchase: Row, charge: Charge) -> str:
        if not charge.refunded:
            return "ignored: partial refund"
        if purchase["status"] == "REFUNDED":
            return "ignored: purchase already REFUNDED"
        taken = 0
        if purchase["status"] == "COMPLETED":
            taken = await debit_available(
                session,
                purchase["user_id"],
                purchase["tokens"],
                kind="REFUND",
                destination=REFUNDS_ACCOUNT,
                key=f"purchase:{purchase['id']}:refund",
                reason=f"Refund of the {purchase['package_name']} package",
                purchase_id=purchase["id"],
            )
        # Refunded before the success arrived: nothing was credited, and nothing ever will be.
        shortfall = purchase["tokens"] - taken if purchase["status"] == "COMPLETED" else 0
        refunded = await store.update_purchase(
            session, purchase["id"], status="REFUNDED", refunded_tokens=taken, refund_shortfall=shortfall
        )
        await events.tokens_refunded(self.outbox, session, refunded)
        return f"refunded {taken}, shortfall {shortfall}"


def _purchase_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
