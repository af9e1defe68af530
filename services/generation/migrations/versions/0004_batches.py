"""generation.batches: a batch's size and whether its summary was published; generations.batch_id.

Revision ID: generation_0004
Revises: generation_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "generation_0004"
down_revision = "generation_0003"
branch_labels = None
depends_on = None

SCHEMA = "generation"


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sealed_at", sa.DateTime(timezone=True)),
        sa.Column("summarized_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
        sa.CheckConstraint("size > 0", name="ck_batches_size_positive"),
        schema=SCHEMA,
    )
    op.add_column("generations", sa.Column("batch_id", sa.Uuid), schema=SCHEMA)
    op.create_index(
        "ix_generations_batch_id",
        "generations",
        ["batch_id"],
        schema=SCHEMA,
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_generations_batch_id", "generations", schema=SCHEMA)
    op.drop_column("generations", "batch_id", schema=SCHEMA)
    op.drop_table("batches", schema=SCHEMA)
