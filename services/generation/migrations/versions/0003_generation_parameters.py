"""generation.generations: negative_prompt and guidance_scale, the parameters only some models take.

Revision ID: generation_0003
Revises: generation_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "generation_0003"
down_revision = "generation_0002"
branch_labels = None
depends_on = None

SCHEMA = "generation"


def upgrade() -> None:
    op.add_column(
        "generations",
        sa.Column("negative_prompt", sa.Text, nullable=False, server_default=""),
        schema=SCHEMA,
    )
    op.add_column("generations", sa.Column("guidance_scale", sa.Double), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("generations", "guidance_scale", schema=SCHEMA)
    op.drop_column("generations", "negative_prompt", schema=SCHEMA)
