"""The fingerprint of the upload an Idempotency-Key was first used with (kit.idempotency).

Revision ID: files_0004
Revises: files_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "files_0004"
down_revision = "files_0003"
branch_labels = None
depends_on = None

SCHEMA = "files"


def upgrade() -> None:
    # Files stored before have none: their key answers CONFLICT rather than a guessed replay.
    op.add_column("files", sa.Column("request_hash", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("files", "request_hash", schema=SCHEMA)
