"""Where a file's thumbnail is stored, once made (services/files/links.py).

Revision ID: files_0005
Revises: files_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "files_0005"
down_revision = "files_0004"
branch_labels = None
depends_on = None

SCHEMA = "files"


def upgrade() -> None:
    # Made on the first request for it; files stored before get theirs the same way.
    op.add_column("files", sa.Column("thumbnail_key", sa.Text), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("files", "thumbnail_key", schema=SCHEMA)
