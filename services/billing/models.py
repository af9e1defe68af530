"""The billing service's tables, all in the ``billing`` schema.

The ledger is double-entry, modelled on TigerBeetle: every transfer debits one
account and credits another. Wallets (one per user) keep their ``balance`` and
``reserved`` on their row, guarded by a CHECK so that available (= balance -
reserved) can never go below zero whatever the code does. System accounts
(grants, purchases, spend, refunds, adjustments) are the other side of every
transfer; their balances are derived from the transfers (reconciliation), never
stored, so they are never a hot row that every wallet's transfer would queue on.

Transfers are immutable (no UPDATE or DELETE is ever issued on them) and each
carries a unique idempotency key. HOLD and RELEASE are the pending and voiding
halves of a two-phase transfer: they move ``reserved``, not ``balance``.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from kit.db import service_metadata
from kit.events import event_tables

metadata = service_metadata("billing")
outbox, inbox = event_tables(metadata)

# The system accounts: fixed ids, created by migration 0002.
GRANTS_ACCOUNT = uuid.UUID(int=1)
PURCHASES_ACCOUNT = uuid.UUID(int=2)
SPEND_ACCOUNT = uuid.UUID(int=3)
REFUNDS_ACCOUNT = uuid.UUID(int=4)
ADJUSTMENTS_ACCOUNT = uuid.UUID(int=5)

TRANSFER_KINDS = ("GRANT", "PURCHASE", "HOLD", "CAPTURE", "RELEASE", "REFUND", "ADJUSTMENT")
# Kinds that change a wallet's balance; HOLD and RELEASE change only its reservation.
POSTING_KINDS = ("GRANT", "PURCHASE", "CAPTURE", "REFUND", "ADJUSTMENT")
HOLD_STATUSES = ("pending", "captured", "released", "expired")
PURCHASE_STATUSES = ("PENDING", "COMPLETED", "FAILED", "REFUNDED")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("kind", sa.Text, nullable=False),  # "wallet" or "system"
    sa.Column("user_id", sa.Text, unique=True),  # wallets only
    sa.Column("code", sa.Text, unique=True),  # system accounts only
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("kind IN ('wallet', 'system')", name="kind"),
    sa.CheckConstraint(
        "kind <> 'wallet' OR (user_id IS NOT NULL AND reserved >= 0 AND balance >= reserved)",
        name="wallet_available_not_negative",
    ),
    sa.CheckConstraint(
        "kind <> 'system' OR (code IS NOT NULL AND balance = 0 AND reserved = 0)", name="system"
    ),
)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("account_id", sa.Uuid, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("generation_id", sa.Text, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("captured_amount", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    sa.Column("capture_idempotency_key", sa.Text),
    sa.Column("release_reason", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("captured_amount >= 0 AND captured_amount <= amount", name="captured_within_hold"),
    sa.CheckConstraint(f"status IN {HOLD_STATUSES}", name="status"),
    sa.CheckConstraint("(status = 'pending') = (resolved_at IS NULL)", name="resolved_when_final"),
)
sa.Index("ix_holds_pending_expiry", holds.c.expires_at, postgresql_where=holds.c.status == "pending")

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("package_name", sa.Text, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="PENDING"),
    sa.Column("payment_intent_id", sa.Text, unique=True),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("failure_code", sa.Text),
    # Stripe's last_payment_error.message (what the customer is told), or ours for an underpayment.
    sa.Column("failure_message", sa.Text),
    sa.Column("refunded_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refund_shortfall", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("refund_reason", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("completed_at", sa.DateTime(timezone=True)),  # when the tokens were credited
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_purchases_user_id_idempotency_key"),
    sa.CheckConstraint(f"status IN {PURCHASE_STATUSES}", name="status"),
    sa.CheckConstraint("tokens > 0 AND amount_cents > 0", name="positive"),
)
sa.Index("ix_purchases_user_id_created_at", purchases.c.user_id, purchases.c.created_at)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()")),
    # Orders a wallet's history (newest first) and pages it.
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False, unique=True),
    sa.Column("kind", sa.Text, nullable=False),
    # No foreign keys to accounts: their KEY SHARE locks on the spend account would make it
    # a multixact hot spot; the reconciliation checks both sides instead.
    sa.Column("debit_account_id", sa.Uuid, nullable=False),
    sa.Column("credit_account_id", sa.Uuid, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False, unique=True),
    # The wallet side: whose history the transfer appears in, and its balance right after.
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("hold_id", sa.Uuid, sa.ForeignKey("holds.id")),
    sa.Column("generation_id", sa.Text),
    sa.Column("purchase_id", sa.Uuid, sa.ForeignKey("purchases.id")),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
    sa.CheckConstraint(f"kind IN {TRANSFER_KINDS}", name="kind"),
    sa.CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
)
sa.Index("ix_transfers_user_id_seq", transfers.c.user_id, transfers.c.seq)
sa.Index("ix_transfers_hold_id", transfers.c.hold_id)

stripe_events = sa.Table(
    "stripe_events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # Stripe's event id, "evt_..."
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("purchase_id", sa.Uuid),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
