"""What the billing service publishes (stream ``events.billing``) and what it consumes.

Published, each in the transaction of the change it describes: billing.tokens_granted,
billing.token_purchase_completed, billing.token_purchase_failed, billing.tokens_refunded,
billing.hold_captured, billing.hold_released (types named in billing/v1/events.proto).

Consumed: ``user.created`` from ``events.users`` grants the welcome tokens. Sign-up asks
for the same grant synchronously (GrantWelcomeTokens) so the first balance read has it; the
event stays for a sign-up whose call to billing failed. The kit's inbox skips a redelivered
event, and the grant's idempotency key ``welcome:<user_id>`` (Ledger.welcome_in) makes the
second of the two, or a re-published UserCreated, grant nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Event, EventConsumer, Outbox, unpack
from stylestudio.billing.v1 import events_pb2
from stylestudio.users.v1 import events_pb2 as users_events_pb2

if TYPE_CHECKING:
    from services.billing.ledger import Ledger
    from services.billing.store import Row

USERS_STREAM = "events.users"


def welcome_key(user_id: str) -> str:
    return f"welcome:{user_id}"


async def tokens_granted(outbox: Outbox, session: AsyncConnection, transfer: Row, granted_by: str) -> None:
    message = events_pb2.TokensGranted(
        user_id=transfer["user_id"],
        transaction_id=str(transfer["id"]),
        amount=transfer["amount"],
        balance_after=transfer["balance_after"],
        reason=transfer["reason"],
        granted_by=granted_by,
    )
    await outbox.add(session, "billing.tokens_granted", message, user_id=transfer["user_id"])


def hold_captured_row(outbox: Outbox, hold: Row, amount: int) -> dict[str, Any]:
    """The outbox row of billing.hold_captured, written by the capture statement itself."""
    message = events_pb2.HoldCaptured(
        user_id=hold["user_id"],
        hold_id=str(hold["id"]),
        generation_id=hold["generation_id"],
        amount=amount,
    )
    return outbox.row("billing.hold_captured", message, user_id=hold["user_id"])[1]


async def hold_released(outbox: Outbox, session: AsyncConnection, hold: Row) -> None:
    message = events_pb2.HoldReleased(
        user_id=hold["user_id"],
        hold_id=str(hold["id"]),
        generation_id=hold["generation_id"],
        amount=hold["amount"],
        reason=hold["release_reason"] or "",
    )
    await outbox.add(session, "billing.hold_released", message, user_id=hold["user_id"])


async def purchase_completed(outbox: Outbox, session: AsyncConnection, purchase: Row) -> None:
    message = events_pb2.TokenPurchaseCompleted(
        user_id=purchase["user_id"],
        purchase_id=str(purchase["id"]),
        package_name=purchase["package_name"],
        tokens=purchase["tokens"],
        amount_cents=purchase["amount_cents"],
        currency=purchase["currency"],
    )
    await outbox.add(session, "billing.token_purchase_completed", message, user_id=purchase["user_id"])


async def purchase_failed(outbox: Outbox, session: AsyncConnection, purchase: Row) -> None:
    message = events_pb2.TokenPurchaseFailed(
        user_id=purchase["user_id"],
        purchase_id=str(purchase["id"]),
        package_name=purchase["package_name"],
        failure_code=purchase["failure_code"] or "",
    )
    await outbox.add(session, "billing.token_purchase_failed", message, user_id=purchase["user_id"])


async def tokens_refunded(outbox: Outbox, session: AsyncConnection, purchase: Row) -> None:
    message = events_pb2.TokensRefunded(
        user_id=purchase["user_id"],
        purchase_id=str(purchase["id"]),
        tokens=purchase["refunded_tokens"],
        shortfall=purchase["refund_shortfall"],
        amount_cents=purchase["amount_cents"],
        currency=purchase["currency"],
    )
    await outbox.add(session, "billing.tokens_refunded", message, user_id=purchase["user_id"])


class WelcomeGrant:
    """Grants the welcome tokens on ``user.created``, once per user."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def on_user_created(self, session: AsyncConnection, event: Event) -> None:
        created = unpack(event, users_events_pb2.UserCreated)
        user_id = created.user_id or event.user_id  # type: ignore[attr-defined]
        if user_id:
            await self.ledger.welcome_in(session, user_id)


def consumers(ledger: Ledger, consumer: EventConsumer) -> Sequence[EventConsumer]:
    consumer.on(USERS_STREAM, "user.created", WelcomeGrant(ledger).on_user_created)
    return [consumer]
