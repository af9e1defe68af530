"""A purchase's outcome for clients following it: Stripe's failure message and when it completed.

Revision ID: billing_0003
Revises: billing_0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "billing_0003"
down_revision = "billing_0002"
branch_labels = None
depends_on = None

SCHEMA = "billing"


def upgrade() -> None:
    op.add_column("purchases", sa.Column("failure_message", sa.Text), schema=SCHEMA)
    op.add_column("purchases", sa.Column("completed_at", sa.DateTime(timezone=True)), schema=SCHEMA)
    # Purchases completed before this revision: their last update is when they completed.
    op.execute(f"UPDATE {SCHEMA}.purchases SET completed_at = updated_at WHERE status = 'COMPLETED'")


def downgrade() -> None:
    op.drop_column("purchases", "completed_at", schema=SCHEMA)
    op.drop_column("purchases", "failure_message", schema=SCHEMA)
