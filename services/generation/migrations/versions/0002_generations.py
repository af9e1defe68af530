"""Generations and Replicate webhook receipts.

Revision ID: generation_0002
Revises: generation_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "generation_0002"
down_revision = "generation_0001"
branch_labels = None
depends_on = None

SCHEMA = "generation"


def upgrade() -> None:
    op.create_table(
        "generations",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("resolution", sa.Text),
        sa.Column("error_reason", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("enhanced_prompt", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("style", sa.Text, nullable=False),
        sa.Column("quality", sa.Text, nullable=False),
        sa.Column("aspect_ratio", sa.Text, nullable=False),
        sa.Column("num_images", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("seed_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("product_image_files", ARRAY(sa.Text), nullable=False),
        sa.Column("model_image_files", ARRAY(sa.Text), nullable=False),
        sa.Column("result_image_files", ARRAY(sa.Text), nullable=False, server_default="{}"),
        sa.Column("token_cost", sa.BigInteger, nullable=False),
        sa.Column("hold_id", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text),
        sa.Column("batch", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("trace_id", sa.Text, nullable=False, server_default=""),
        sa.Column("traceparent", sa.Text, nullable=False, server_default=""),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("prediction_id", sa.Text),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("processing_time_ms", sa.BigInteger),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_generations_user_created",
        "generations",
        ["user_id", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=SCHEMA,
    )
    op.create_index(
        "uq_generations_user_idempotency_key",
        "generations",
        ["user_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_generations_unfinished",
        "generations",
        ["updated_at"],
        postgresql_where=sa.text("status NOT IN ('COMPLETED', 'FAILED', 'CANCELED')"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_generations_prediction",
        "generations",
        ["prediction_id"],
        postgresql_where=sa.text("prediction_id IS NOT NULL"),
        schema=SCHEMA,
    )
    op.create_table(
        "replicate_webhooks",
        sa.Column("webhook_id", sa.Text, nullable=False),
        sa.Column("prediction_id", sa.Text, nullable=False),
        sa.Column("prediction_status", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("webhook_id", name="pk_replicate_webhooks"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("replicate_webhooks", schema=SCHEMA)
    op.drop_table("generations", schema=SCHEMA)
