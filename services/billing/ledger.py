"""The token ledger's rules: holds (reserve, capture, release, expiry), grants, balances.

Every operation is one database transaction, safe under any concurrency and across
replicas (the guarantees live in PostgreSQL, see store.py), and idempotent: a
retried call returns the first result and moves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kit import audit
from kit.db import Database
from kit.errors import (
    Conflict,
    FailedPrecondition,
    InsufficientTokens,
    NotFound,
    ValidationError,
    excerpt,
)
from kit.events import Outbox
from kit.idempotency import IdempotencyKeyReused
from kit.logs import describe_error
from services.billing import events, store
from services.billing.models import GRANTS_ACCOUNT
from services.billing.settings import BillingSettings

log = logging.getLogger("stylestudio.billing.ledger")

Row = store.Row


@dataclass(frozen=True)
class Balance:
    balance: int
    reserved: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


@dataclass(frozen=True)
class Grant:
    balance: int
    transfer: Row
    # False when the idempotency key found an earlier grant: nothing moved this time.
    fresh: bool = True


@dataclass(frozen=True)
class Summary:
    balance: Balance
    tokens_spent: int
    tokens_purchased: int


class HoldNotCapturable(FailedPrecondition):
    """The hold was released or expired: its tokens went back to the wallet."""


class HoldAlreadyCaptured(FailedPrecondition):
    """The hold was spent: it can no longer be released."""


class Ledger:
    def __init__(self, db: Database, outbox: Outbox, settings: BillingSettings) -> None:
        self.db, self.outbox, self.settings = db, outbox, settings

    # --- balances ---

    async def balance(self, user_id: str) -> Balance:
        async with self.db.autocommit() as session:
            wallet = await store.wallet(session, user_id)
        return Balance(0, 0) if wallet is None else Balance(wallet["balance"], wallet["reserved"])

    async def transactions(self, user_id: str, before_seq: int | None, limit: int) -> list[Row]:
        """The wallet's transfers, newest first."""
        async with self.db.autocommit() as session:
            return await store.transfers_page(session, user_id, before_seq, limit)

    async def summary(self, user_id: str) -> Summary:
        async with self.db.autocommit() as session:
            wallet = await store.wallet(session, user_id)
            totals = await store.wallet_totals(session, user_id)
        balance = Balance(0, 0) if wallet is None else Balance(wallet["balance"], wallet["reserved"])
        return Summary(balance, int(totals["spent"]), int(totals["purchased"]))

    # --- holds ---

    async def reserve_tokens(
        self,
        user_id: str,
        amount: int,
        generation_id: str,
        idempotency_key: str,
        ttl: timedelta | None = None,
        reason: str = "",
    ) -> Row:
        _require(user_id, "user_id")
        _require(generation_id, "generation_id")
        _require(idempotency_key, "idempotency_key")
        _positive(amount, "amount")
        ttl_seconds = self._hold_ttl(ttl)
        reason = reason or f"Generation {generation_id}"
        return await _retry_on_key_race(
            lambda: self._reserve_once(user_id, amount, generation_id, idempotency_key, ttl_seconds, reason)
        )

    async def _reserve_once(
        self, user_id: str, amount: int, generation_id: str, key: str, ttl_seconds: float, reason: str
    ) -> Row:
        # One statement, so no BEGIN/COMMIT round trips: in autocommit it is its own transaction,
        # atomic as a whole (the wallet UPDATE, the hold and its HOLD transfer commit together).
        async with self.db.autocommit() as connection:
            hold = await store.reserve(
                connection,
                user_id=user_id,
                amount=amount,
                generation_id=generation_id,
                key=key,
                reason=reason,
                ttl_seconds=ttl_seconds,
            )
            if hold is not None:
                return hold
            existing = await store.hold_by_key(connection, key)
            if existing is not None:
                if (existing["user_id"], existing["amount"]) != (user_id, amount):
                    raise Conflict(
                        "This idempotency key was used for another reservation",
                        details={"idempotency_key": key},
                    )
                return existing
            wallet = await store.wallet(connection, user_id)
        available = 0 if wallet is None else wallet["balance"] - wallet["reserved"]
        raise InsufficientTokens(required=amount, available=available)

    def _hold_ttl(self, ttl: timedelta | None) -> float:
        if ttl is None or ttl <= timedelta(0):
            return float(self.settings.hold_default_ttl_seconds)
        seconds = ttl.total_seconds()
        if seconds > self.settings.hold_max_ttl_seconds:
            raise ValidationError(
                f"expires_in may be at most {self.settings.hold_max_ttl_seconds} seconds", field="expires_in"
            )
        return seconds

    async def capture_hold(self, hold_id: str, amount: int | None, idempotency_key: str) -> Row:
        parsed = _uuid(hold_id, "hold_id")
        _require(idempotency_key, "idempotency_key")
        if amount is not None and amount < 0:
            raise ValidationError("amount must not be negative", field="amount")
        # The common case in two autocommit statements: read the hold (its event needs its user
        # and generation), then capture it and write the event in one statement, guarded by
        # the hold's state, so a concurrent capture, release or expiry makes it a no-op.
        async with self.db.autocommit() as connection:
            hold = await store.hold(connection, parsed)
            if hold is not None and hold["status"] == "pending":
                captured_amount = hold["amount"] if amount is None else amount
                if captured_amount <= hold["amount"]:
                    event = events.hold_captured_row(self.outbox, hold, captured_amount)
                    captured = await store.capture(connection, parsed, amount, idempotency_key, event)
                    if captured is not None:
                        self.outbox.written()
                        return captured
        # Not captured: a retry, a hold already resolved, an amount too large, or past its expiry.
        async with self.db.transaction() as session:
            hold = await self._existing_hold(session, parsed)
            if hold["status"] == "captured":
                return hold  # a retry: the first capture stands
            if hold["status"] == "pending" and amount is not None and amount > hold["amount"]:
                raise ValidationError(
                    f"Cannot capture {amount} tokens from a hold of {hold['amount']}",
                    field="amount",
                    details={"held": hold["amount"]},
                )
            if hold["status"] == "pending":  # past its expiry, not swept yet: void it now
                hold = await self._void(session, parsed, "expired", "expired") or hold
        raise HoldNotCapturable(
            f"Hold {hold_id} is {hold['status']}; its tokens were given back",
            details={"hold_id": hold_id, "status": hold["status"]},
        )

    async def release_hold(self, hold_id: str, reason: str) -> Row:
        parsed = _uuid(hold_id, "hold_id")
        async with self.db.transaction() as session:
            released = await self._void(session, parsed, "released", reason or "released")
            if released is not None:
                return released
            hold = await self._existing_hold(session, parsed)
            if hold["status"] != "captured":
                return hold  # already released or expired: the tokens went back once
        raise HoldAlreadyCaptured(
            f"Hold {hold_id} was captured; it cannot be released",
            details={"hold_id": hold_id, "status": "captured"},
        )

    async def expire_holds(self) -> int:
        """Voids pending holds past their expiry; returns how many."""
        async with self.db.transaction() as session:
            expired = await store.lock_expired_holds(session, self.settings.hold_sweep_batch_size)
            for hold_id in expired:
                await self._void(session, hold_id, "expired", "expired")
        return len(expired)

    async def sweep_expired_holds(self) -> None:
        """The background loop every replica runs; SKIP LOCKED keeps them from double work."""
        while True:
            try:
                while await self.expire_holds() >= self.settings.hold_sweep_batch_size:
                    pass
            except (sa.exc.SQLAlchemyError, OSError) as error:
                log.warning("hold sweep failed; retrying", extra={"error": describe_error(error)})
            await asyncio.sleep(self.settings.hold_sweep_interval_seconds)

    async def _void(
        self, session: AsyncConnection, hold_id: uuid.UUID, status: str, reason: str
    ) -> Row | None:
        voided = await store.release(session, hold_id, status, reason)
        if voided is not None:
            await events.hold_released(self.outbox, session, voided)
        return voided

    async def _existing_hold(self, session: AsyncConnection, hold_id: uuid.UUID) -> Row:
        hold = await store.hold(session, hold_id)
        if hold is None:
            raise NotFound(f"Hold {hold_id} not found", details={"hold_id": str(hold_id)})
        return hold

    # --- credits ---

    async def grant_tokens(
        self,
        user_id: str,
        amount: int,
        reason: str,
        idempotency_key: str,
        granted_by: str = "",
        *,
        known_users_only: bool = False,
    ) -> Grant:
        """A GRANT, once per key. ``known_users_only``: NOT_FOUND, and no wallet created, for a
        user billing has not seen sign up (every user's wallet is opened on ``user.created``)."""
        _require(user_id, "user_id")
        _require(reason, "reason")
        _require(idempotency_key, "idempotency_key")
        _positive(amount, "amount")
        limit = self.settings.max_grant_tokens
        if amount > limit:
            raise ValidationError(f"amount may be at most {limit}", field="amount", details={"max": limit})
        async with self.db.transaction() as session:
            grant = await self.grant_in(
                session,
                user_id,
                amount,
                reason,
                idempotency_key,
                granted_by,
                open_wallet=not known_users_only,
            )
            if grant.fresh:  # an admin's or the operator's grant: the audit log's (not the welcome grant)
                await audit.record(
                    self.outbox,
                    session,
                    audit.TOKENS_GRANTED,
                    target=audit.user_target(user_id),
                    details={"amount": amount, "transactionId": grant.transfer["id"]},
                )
        if grant.transfer["reason"] != reason:
            raise IdempotencyKeyReused(idempotency_key)
        return grant

    async def grant_in(
        self,
        session: AsyncConnection,
        user_id: str,
        amount: int,
        reason: str,
        key: str,
        granted_by: str = "",
        *,
        open_wallet: bool = True,
    ) -> Grant:
        """A GRANT inside the caller's transaction (the user.created consumer runs in its inbox's)."""
        transfer, fresh = await credit_wallet(
            session,
            user_id,
            amount,
            kind="GRANT",
            source=GRANTS_ACCOUNT,
            key=key,
            reason=reason,
            open_wallet=open_wallet,
        )
        if fresh:
            await events.tokens_granted(self.outbox, session, transfer, granted_by)
        return Grant(transfer["balance_after"], transfer, fresh)

    async def open_wallet(self, session: AsyncConnection, user_id: str) -> None:
        """The user's wallet, empty, if it has none yet: billing knows the user from now on."""
        await store.ensure_wallet(session, user_id)


async def credit_wallet(
    session: AsyncConnection,
    user_id: str,
    amount: int,
    *,
    kind: str,
    source: uuid.UUID,
    key: str,
    reason: str,
    purchase_id: uuid.UUID | None = None,
    open_wallet: bool = True,
) -> tuple[Row, bool]:
    """Credits a wallet once per key: ``(transfer, True)``, or ``(first transfer, False)`` on a retry.

    The wallet row is locked first, so concurrent calls with the same key queue on it and
    the second one finds the first one's transfer. Without ``open_wallet``, a user with no
    wallet is NOT_FOUND.
    """
    if open_wallet:
        await store.ensure_wallet(session, user_id)
    wallet = await store.wallet(session, user_id, for_update=True)
    if wallet is None:
        raise NotFound(f"User {user_id[:64]} not found", details={"user_id": user_id[:64]})
    existing = await store.transfer_by_key(session, key)
    if existing is not None:
        if (existing["user_id"], existing["amount"], existing["kind"]) != (user_id, amount, kind):
            raise Conflict(
                "This idempotency key was used for another operation", details={"idempotency_key": key}
            )
        return existing, False
    balance = await store.move_balance(session, wallet["id"], amount)
    transfer = await store.insert_transfer(
        session,
        kind=kind,
        debit_account_id=source,
        credit_account_id=wallet["id"],
        amount=amount,
        idempotency_key=key,
        user_id=user_id,
        balance_after=balance,
        purchase_id=purchase_id,
        reason=reason,
    )
    return transfer, True


async def debit_available(
    session: AsyncConnection,
    user_id: str,
    amount: int,
    *,
    kind: str,
    destination: uuid.UUID,
    key: str,
    reason: str,
    purchase_id: uuid.UUID | None = None,
) -> int:
    """Takes up to ``amount`` tokens back, never more than available (held tokens stay held);
    returns what was taken. Once per key, like ``credit_wallet``."""
    await store.ensure_wallet(session, user_id)
    wallet = await store.wallet(session, user_id, for_update=True)
    assert wallet is not None
    existing = await store.transfer_by_key(session, key)
    if existing is not None:
        return int(existing["amount"])
    taken = min(amount, wallet["balance"] - wallet["reserved"])
    if taken <= 0:
        return 0
    balance = await store.move_balance(session, wallet["id"], -taken)
    await store.insert_transfer(
        session,
        kind=kind,
        debit_account_id=wallet["id"],
        credit_account_id=destination,
        amount=taken,
        idempotency_key=key,
        user_id=user_id,
        balance_after=balance,
        purchase_id=purchase_id,
        reason=reason,
    )
    return taken


async def _retry_on_key_race(operation):  # type: ignore[no-untyped-def]
    """Two calls with the same new key raced past each other's check: the loser retries and
    then finds the winner's result (the unique index made sure only one moved tokens)."""
    try:
        return await operation()
    except sa.exc.IntegrityError as error:
        if "idempotency_key" not in str(error.orig):
            raise
        return await operation()


def _require(value: str, field: str) -> None:
    if not value:
        raise ValidationError(f"{field} is required", field=field)


def _positive(amount: int, field: str) -> None:
    if amount <= 0:
        raise ValidationError(f"{field} must be positive", field=field)


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"{field} {excerpt(value)!r} not found", details={field: excerpt(value)}) from None
