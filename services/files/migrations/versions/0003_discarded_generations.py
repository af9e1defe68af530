"""Generations whose results were discarded: a later store of their results is refused.

Revision ID: files_0003
Revises: files_0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "files_0003"
down_revision = "files_0002"
branch_labels = None
depends_on = None

SCHEMA = "files"


def upgrade() -> None:
    op.create_table(
        "discarded_generations",
        sa.Column("generation_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("generation_id", name="pk_discarded_generations"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_discarded_generations_discarded_at", "discarded_generations", ["discarded_at"], schema=SCHEMA
    )


def downgrade() -> None:
    op.drop_table("discarded_generations", schema=SCHEMA)
