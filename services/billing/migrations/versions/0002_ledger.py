"""The token ledger: accounts, holds, purchases, transfers, Stripe events.

Revision ID: billing_0002
Revises: billing_0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0002"
down_revision = "billing_0001"
branch_labels = None
depends_on = None

SCHEMA = "billing"
NOW = sa.text("now()")
SYSTEM_ACCOUNTS = {1: "grants", 2: "purchases", 3: "spend", 4: "refunds", 5: "adjustments"}


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=None if nullable else NOW
    )


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("code", sa.Text),
        sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved", sa.BigInteger, nullable=False, server_default="0"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("user_id", name="uq_accounts_user_id"),
        sa.UniqueConstraint("code", name="uq_accounts_code"),
        sa.CheckConstraint("kind IN ('wallet', 'system')", name="ck_accounts_kind"),
        sa.CheckConstraint(
            "kind <> 'wallet' OR (user_id IS NOT NULL AND reserved >= 0 AND balance >= reserved)",
            name="ck_accounts_wallet_available_not_negative",
        ),
        sa.CheckConstraint(
            "kind <> 'system' OR (code IS NOT NULL AND balance = 0 AND reserved = 0)",
            name="ck_accounts_system",
        ),
        schema=SCHEMA,
    )
    op.bulk_insert(
        sa.table(
            "accounts",
            sa.column("id", sa.Uuid),
            sa.column("kind", sa.Text),
            sa.column("code", sa.Text),
            schema=SCHEMA,
        ),
        [
            {"id": f"00000000-0000-0000-0000-{number:012d}", "kind": "system", "code": code}
            for number, code in SYSTEM_ACCOUNTS.items()
        ],
    )
    op.create_table(
        "holds",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("account_id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("generation_id", sa.Text, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("captured_amount", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("capture_idempotency_key", sa.Text),
        sa.Column("release_reason", sa.Text),
        _timestamp("created_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        _timestamp("resolved_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_holds"),
        sa.ForeignKeyConstraint(
            ["account_id"], [f"{SCHEMA}.accounts.id"], name="fk_holds_account_id_accounts"
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_holds_idempotency_key"),
        sa.CheckConstraint("amount > 0", name="ck_holds_amount_positive"),
        sa.CheckConstraint(
            "captured_amount >= 0 AND captured_amount <= amount", name="ck_holds_captured_within_hold"
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'captured', 'released', 'expired')", name="ck_holds_status"
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (resolved_at IS NULL)", name="ck_holds_resolved_when_final"
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_holds_pending_expiry",
        "holds",
        ["expires_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "purchases",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("package_name", sa.Text, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="PENDING"),
        sa.Column("payment_intent_id", sa.Text),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("failure_code", sa.Text),
        sa.Column("refunded_tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("refund_shortfall", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("refund_reason", sa.Text),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_purchases"),
        sa.UniqueConstraint("payment_intent_id", name="uq_purchases_payment_intent_id"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_purchases_user_id_idempotency_key"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'COMPLETED', 'FAILED', 'REFUNDED')", name="ck_purchases_status"
        ),
        sa.CheckConstraint("tokens > 0 AND amount_cents > 0", name="ck_purchases_positive"),
        schema=SCHEMA,
    )
    op.create_index("ix_purchases_user_id_created_at", "purchases", ["user_id", "created_at"], schema=SCHEMA)
    op.create_table(
        "transfers",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("debit_account_id", sa.Uuid, nullable=False),
        sa.Column("credit_account_id", sa.Uuid, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.Uuid),
        sa.Column("generation_id", sa.Text),
        sa.Column("purchase_id", sa.Uuid),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_transfers"),
        sa.UniqueConstraint("seq", name="uq_transfers_seq"),
        sa.UniqueConstraint("idempotency_key", name="uq_transfers_idempotency_key"),
        sa.ForeignKeyConstraint(["hold_id"], [f"{SCHEMA}.holds.id"], name="fk_transfers_hold_id_holds"),
        sa.ForeignKeyConstraint(
            ["purchase_id"], [f"{SCHEMA}.purchases.id"], name="fk_transfers_purchase_id_purchases"
        ),
        sa.CheckConstraint("amount > 0", name="ck_transfers_amount_positive"),
        sa.CheckConstraint("debit_account_id <> credit_account_id", name="ck_transfers_distinct_accounts"),
        sa.CheckConstraint(
            "kind IN ('GRANT', 'PURCHASE', 'HOLD', 'CAPTURE', 'RELEASE', 'REFUND', 'ADJUSTMENT')",
            name="ck_transfers_kind",
        ),
        sa.CheckConstraint("balance_after >= 0", name="ck_transfers_balance_after_not_negative"),
        schema=SCHEMA,
    )
    op.create_index("ix_transfers_user_id_seq", "transfers", ["user_id", "seq"], schema=SCHEMA)
    op.create_index("ix_transfers_hold_id", "transfers", ["hold_id"], schema=SCHEMA)
    # Transfers are history: the database itself refuses to rewrite or delete them.
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.transfers_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'billing.transfers is append-only (% refused)', TG_OP;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER transfers_are_immutable BEFORE UPDATE OR DELETE ON {SCHEMA}.transfers
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.transfers_are_immutable()
        """
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("purchase_id", sa.Uuid),
        sa.Column("outcome", sa.Text, nullable=False),
        _timestamp("received_at"),
        sa.PrimaryKeyConstraint("id", name="pk_stripe_events"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("stripe_events", schema=SCHEMA)
    op.drop_table("transfers", schema=SCHEMA)
    op.execute(f"DROP FUNCTION {SCHEMA}.transfers_are_immutable()")
    op.drop_table("purchases", schema=SCHEMA)
    op.drop_table("holds", schema=SCHEMA)
    op.drop_table("accounts", schema=SCHEMA)
