"""The only place that talks SQL for the billing service.

The hot operations (reserve, capture, release) are single statements: the wallet
row is locked by their UPDATE, whose WHERE clause re-checks ``balance - reserved``
on the latest row version (PostgreSQL re-evaluates it after waiting for a
concurrent writer), so no replica can ever over-reserve a wallet; the table's CHECK
constraint is the last line behind that. A hold's terminal state changes with
``WHERE status = 'pending'``, so it is captured or released at most once, and every
transfer carries a unique idempotency key, so the same key never moves tokens twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.billing.models import (
    POSTING_KINDS,
    SPEND_ACCOUNT,
    accounts,
    holds,
    purchases,
    stripe_events,
    transfers,
)

Row = sa.RowMapping
# Statements that need no transaction of their own also run on an autocommit connection.
Executor = AsyncConnection

_RESERVE = sa.text(
    """
    WITH wallet AS (
        UPDATE accounts
           SET reserved = reserved + :amount, updated_at = now()
         WHERE user_id = :user_id AND kind = 'wallet'
           AND balance - reserved >= :amount
           AND NOT EXISTS (SELECT 1 FROM holds WHERE idempotency_key = :key)
        RETURNING id, balance
    ), hold AS (
        INSERT INTO holds (id, account_id, user_id, generation_id, amount, reason, idempotency_key,
                           expires_at)
        SELECT :hold_id, wallet.id, :user_id, :generation_id, :amount, :reason, :key,
               now() + make_interval(secs => :ttl_seconds)
          FROM wallet
        RETURNING *
    ), transfer AS (
        INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, idempotency_key,
                               user_id, balance_after, hold_id, generation_id, reason)
        SELECT :transfer_id, 'HOLD', wallet.id, :spend, :amount, :key,
               :user_id, wallet.balance, hold.id, :generation_id, :reason
          FROM wallet, hold
    )
    SELECT * FROM hold
    """
)

# Capture and its billing.hold_captured event in one autocommit statement: the event row is
# written only if the hold was captured, and commits with it (the transactional outbox,
# without BEGIN/COMMIT round trips).
_CAPTURE = sa.text(
    """
    WITH hold AS (
        UPDATE holds
           SET status = 'captured', captured_amount = COALESCE(CAST(:amount AS bigint), amount),
               capture_idempotency_key = :key, resolved_at = now()
         WHERE id = :hold_id AND status = 'pending' AND expires_at > now()
           AND COALESCE(CAST(:amount AS bigint), amount) <= amount
        RETURNING *
    ), wallet AS (
        UPDATE accounts a
           SET balance = a.balance - hold.captured_amount, reserved = a.reserved - hold.amount,
               updated_at = now()
          FROM hold
         WHERE a.id = hold.account_id
        RETURNING a.id, a.balance
    ), spent AS (
        INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, idempotency_key,
                               user_id, balance_after, hold_id, generation_id, reason)
        SELECT :capture_id, 'CAPTURE', wallet.id, :spend, hold.captured_amount,
               'hold\\:' || hold.id || '\\:capture', hold.user_id, wallet.balance, hold.id,
               hold.generation_id, hold.reason
          FROM hold, wallet
         WHERE hold.captured_amount > 0
    ), rest AS (
        INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, idempotency_key,
                               user_id, balance_after, hold_id, generation_id, reason)
        SELECT :release_id, 'RELEASE', wallet.id, :spend, hold.amount - hold.captured_amount,
               'hold\\:' || hold.id || '\\:release', hold.user_id, wallet.balance, hold.id,
               hold.generation_id, 'Uncaptured rest of the hold'
          FROM hold, wallet
         WHERE hold.amount > hold.captured_amount
    ), event AS (
        INSERT INTO outbox (event_id, stream, event_type, payload)
        SELECT :event_id, :event_stream, :event_type, :event_payload
          FROM hold
    )
    SELECT hold.* FROM hold
    """
)

_RELEASE = sa.text(
    """
    WITH hold AS (
        UPDATE holds
           SET status = :status, release_reason = :reason, resolved_at = now()
         WHERE id = :hold_id AND status = 'pending'
        RETURNING *
    ), wallet AS (
        UPDATE accounts a
           SET reserved = a.reserved - hold.amount, updated_at = now()
          FROM hold
         WHERE a.id = hold.account_id
        RETURNING a.id, a.balance
    ), voided AS (
        INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, amount, idempotency_key,
                               user_id, balance_after, hold_id, generation_id, reason)
        SELECT :release_id, 'RELEASE', wallet.id, :spend, hold.amount,
               'hold\\:' || hold.id || '\\:release', hold.user_id, wallet.balance, hold.id,
               hold.generation_id, :reason
          FROM hold, wallet
    )
    SELECT hold.* FROM hold
    """
)


# --- wallets ---


async def ensure_wallet(session: AsyncConnection, user_id: str) -> None:
    await session.execute(
        pg_insert(accounts)
        .values(id=uuid.uuid4(), kind="wallet", user_id=user_id)
        .on_conflict_do_nothing(index_elements=[accounts.c.user_id])
    )


async def wallet(session: Executor, user_id: str, *, for_update: bool = False) -> Row | None:
    query = sa.select(accounts.c.id, accounts.c.balance, accounts.c.reserved).where(
        accounts.c.user_id == user_id, accounts.c.kind == "wallet"
    )
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).mappings().first()


async def move_balance(session: AsyncConnection, account_id: uuid.UUID, delta: int) -> int:
    """Changes a locked wallet's balance; returns the new balance (the CHECK guards available >= 0)."""
    result = await session.execute(
        sa.update(accounts)
        .where(accounts.c.id == account_id)
        .values(balance=accounts.c.balance + delta, updated_at=sa.func.now())
        .returning(accounts.c.balance)
    )
    return int(result.scalar_one())


# --- transfers ---


async def transfer_by_key(session: AsyncConnection, key: str) -> Row | None:
    query = sa.select(transfers).where(transfers.c.idempotency_key == key)
    return (await session.execute(query)).mappings().first()


async def insert_transfer(session: AsyncConnection, **values: Any) -> Row:
    values.setdefault("id", uuid.uuid4())
    result = await session.execute(sa.insert(transfers).values(**values).returning(transfers))
    return result.mappings().one()


async def transfers_page(
    session: AsyncConnection, user_id: str, before_seq: int | None, limit: int
) -> list[Row]:
    query = sa.select(transfers).where(transfers.c.user_id == user_id)
    if before_seq is not None:
        query = query.where(transfers.c.seq < before_seq)
    query = query.order_by(transfers.c.seq.desc()).limit(limit)
    return list((await session.execute(query)).mappings().all())


async def wallet_totals(session: AsyncConnection, user_id: str) -> Row:
    query = sa.select(
        sa.func.coalesce(sa.func.sum(transfers.c.amount).filter(transfers.c.kind == "CAPTURE"), 0).label(
            "spent"
        ),
        sa.func.coalesce(sa.func.sum(transfers.c.amount).filter(transfers.c.kind == "PURCHASE"), 0).label(
            "purchased"
        ),
    ).where(transfers.c.user_id == user_id)
    return (await session.execute(query)).mappings().one()


# --- holds ---


async def reserve(
    session: Executor,
    *,
    user_id: str,
    amount: int,
    generation_id: str,
    key: str,
    reason: str,
    ttl_seconds: float,
) -> Row | None:
    """The new pending hold, or None if the key is taken or the wallet cannot afford it."""
    params = {
        "hold_id": uuid.uuid4(),
        "transfer_id": uuid.uuid4(),
        "spend": SPEND_ACCOUNT,
        "user_id": user_id,
        "amount": amount,
        "generation_id": generation_id,
        "key": key,
        "reason": reason,
        "ttl_seconds": ttl_seconds,
    }
    return (await session.execute(_RESERVE, params)).mappings().first()


async def capture(
    session: Executor, hold_id: uuid.UUID, amount: int | None, key: str, event: Mapping[str, Any]
) -> Row | None:
    """The captured hold, or None if it is not pending (or not capturable for that amount).

    ``event`` is the outbox row (``Outbox.row``) of its billing.hold_captured event."""
    params = {
        "hold_id": hold_id,
        "amount": amount,
        "key": key,
        "capture_id": uuid.uuid4(),
        "release_id": uuid.uuid4(),
        "spend": SPEND_ACCOUNT,
        "event_id": event["event_id"],
        "event_stream": event["stream"],
        "event_type": event["event_type"],
        "event_payload": event["payload"],
    }
    return (await session.execute(_CAPTURE, params)).mappings().first()


async def release(session: AsyncConnection, hold_id: uuid.UUID, status: str, reason: str) -> Row | None:
    """The voided hold ("released" or "expired"), or None if it was not pending."""
    params = {
        "hold_id": hold_id,
        "status": status,
        "reason": reason,
        "release_id": uuid.uuid4(),
        "spend": SPEND_ACCOUNT,
    }
    return (await session.execute(_RELEASE, params)).mappings().first()


async def hold(session: Executor, hold_id: uuid.UUID) -> Row | None:
    return (await session.execute(sa.select(holds).where(holds.c.id == hold_id))).mappings().first()


async def hold_by_key(session: Executor, key: str) -> Row | None:
    query = sa.select(holds).where(holds.c.idempotency_key == key)
    return (await session.execute(query)).mappings().first()


async def lock_expired_holds(session: AsyncConnection, limit: int) -> list[uuid.UUID]:
    """Pending holds past their expiry, locked; replicas sweeping at once skip each other's."""
    query = (
        sa.select(holds.c.id)
        .where(holds.c.status == "pending", holds.c.expires_at <= sa.func.now())
        .order_by(holds.c.expires_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(query)).scalars().all())


# --- purchases ---


async def insert_purchase(session: AsyncConnection, **values: Any) -> Row | None:
    """The new purchase, or None if this user already used the idempotency key."""
    result = await session.execute(
        pg_insert(purchases)
        .values(id=uuid.uuid4(), **values)
        .on_conflict_do_nothing(constraint="uq_purchases_user_id_idempotency_key")
        .returning(purchases)
    )
    return result.mappings().first()


async def purchase_by_key(session: AsyncConnection, user_id: str, key: str) -> Row | None:
    query = sa.select(purchases).where(purchases.c.user_id == user_id, purchases.c.idempotency_key == key)
    return (await session.execute(query)).mappings().first()


async def purchase(
    session: AsyncConnection, purchase_id: uuid.UUID, *, for_update: bool = False
) -> Row | None:
    query = sa.select(purchases).where(purchases.c.id == purchase_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).mappings().first()


async def purchase_by_payment_intent(session: AsyncConnection, payment_intent_id: str) -> Row | None:
    query = sa.select(purchases.c.id).where(purchases.c.payment_intent_id == payment_intent_id)
    found = (await session.execute(query)).scalar_one_or_none()
    return None if found is None else await purchase(session, found, for_update=True)


async def update_purchase(session: AsyncConnection, purchase_id: uuid.UUID, **values: Any) -> Row:
    result = await session.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id)
        .values(updated_at=sa.func.now(), **values)
        .returning(purchases)
    )
    return result.mappings().one()


async def attach_payment_intent(
    session: AsyncConnection, purchase_id: uuid.UUID, payment_intent_id: str
) -> None:
    await session.execute(
        sa.update(purchases)
        .where(purchases.c.id == purchase_id, purchases.c.payment_intent_id.is_(None))
        .values(payment_intent_id=payment_intent_id, updated_at=sa.func.now())
    )


async def purchases_page(
    session: AsyncConnection, user_id: str, before: tuple[datetime, uuid.UUID] | None, limit: int
) -> list[Row]:
    query = sa.select(purchases).where(purchases.c.user_id == user_id)
    if before is not None:
        query = query.where(sa.tuple_(purchases.c.created_at, purchases.c.id) < sa.tuple_(*before))
    query = query.order_by(purchases.c.created_at.desc(), purchases.c.id.desc()).limit(limit)
    return list((await session.execute(query)).mappings().all())


async def record_stripe_event(
    session: AsyncConnection, event_id: str, event_type: str, purchase_id: uuid.UUID | None, outcome: str
) -> bool:
    """False if the event was recorded before (a duplicate delivery)."""
    result = await session.execute(
        pg_insert(stripe_events)
        .values(id=event_id, type=event_type, purchase_id=purchase_id, outcome=outcome)
        .on_conflict_do_nothing()
        .returning(stripe_events.c.id)
    )
    return result.first() is not None


async def set_stripe_event_outcome(
    session: AsyncConnection, event_id: str, outcome: str, purchase_id: uuid.UUID | None
) -> None:
    await session.execute(
        sa.update(stripe_events)
        .where(stripe_events.c.id == event_id)
        .values(outcome=outcome, purchase_id=purchase_id)
    )


# --- reconciliation ---


async def use_one_snapshot(session: AsyncConnection) -> None:
    """Must be the transaction's first statement."""
    await session.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))


_WALLET_DISCREPANCIES = sa.text(
    """
    WITH ledger AS (
        SELECT a.user_id, a.balance, a.reserved,
               COALESCE(SUM(CASE WHEN t.kind NOT IN ('GRANT', 'PURCHASE', 'CAPTURE', 'REFUND', 'ADJUSTMENT')
                                 THEN 0
                                 WHEN t.credit_account_id = a.id THEN t.amount
                                 ELSE -t.amount END), 0) AS transfers_balance,
               COALESCE(SUM(CASE WHEN t.kind = 'HOLD' THEN t.amount
                                 WHEN t.kind = 'RELEASE' THEN -t.amount
                                 WHEN t.kind = 'CAPTURE' AND t.hold_id IS NOT NULL THEN -t.amount
                                 ELSE 0 END), 0) AS transfers_reserved,
               (SELECT COALESCE(SUM(h.amount), 0) FROM holds h
                 WHERE h.account_id = a.id AND h.status = 'pending') AS pending_holds,
               COALESCE((SELECT l.balance_after FROM transfers l WHERE l.user_id = a.user_id
                          ORDER BY l.seq DESC LIMIT 1), 0) AS last_balance_after
          FROM accounts a
          LEFT JOIN transfers t ON t.user_id = a.user_id
         WHERE a.kind = 'wallet'
         GROUP BY a.id
    )
    SELECT * FROM ledger
     WHERE balance <> transfers_balance OR balance <> last_balance_after
        OR reserved <> transfers_reserved OR reserved <> pending_holds
    """
)


async def wallet_discrepancies(session: AsyncConnection) -> Sequence[Row]:
    """Wallets whose stored balance or reservation differs from what their transfers and holds say."""
    return (await session.execute(_WALLET_DISCREPANCIES)).mappings().all()


async def system_balances(session: AsyncConnection) -> dict[str, int]:
    """Each system account's balance, derived from its transfers (credits - debits, posted only)."""
    signed = sa.case(
        (transfers.c.credit_account_id == accounts.c.id, transfers.c.amount), else_=-transfers.c.amount
    )
    query = (
        sa.select(accounts.c.code, sa.func.coalesce(sa.func.sum(signed), 0))
        .select_from(
            accounts.outerjoin(
                transfers,
                sa.and_(
                    transfers.c.kind.in_(POSTING_KINDS),
                    sa.or_(
                        transfers.c.debit_account_id == accounts.c.id,
                        transfers.c.credit_account_id == accounts.c.id,
                    ),
                ),
            )
        )
        .where(accounts.c.kind == "system")
        .group_by(accounts.c.code)
    )
    return {code: int(total) for code, total in (await session.execute(query)).all()}


async def wallet_count(session: AsyncConnection) -> int:
    query = sa.select(sa.func.count()).select_from(accounts).where(accounts.c.kind == "wallet")
    return int((await session.execute(query)).scalar_one())


async def pending_holds(session: AsyncConnection) -> tuple[int, float]:
    """How many holds are pending, and the age in seconds of the oldest (0: none), for metrics."""
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.extract("epoch", sa.func.clock_timestamp() - sa.func.min(holds.c.created_at)), 0),
    ).where(holds.c.status == "pending")
    count, oldest = (await session.execute(query)).one()
    return int(count), max(0.0, float(oldest))
