"""users.credentials_version: orders the copies of a user's credential state in Redis.

Revision ID: users_0004
Revises: users_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0004"
down_revision = "users_0003"
branch_labels = None
depends_on = None

SCHEMA = "users"


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("credentials_version", sa.BigInteger, nullable=False, server_default="0"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("users", "credentials_version", schema=SCHEMA)
