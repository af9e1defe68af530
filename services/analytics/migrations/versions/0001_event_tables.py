"""The analytics schema's outbox and inbox.

Revision ID: analytics_0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from kit.migrations import create_event_tables, drop_event_tables

revision = "analytics_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_event_tables("analytics")


def downgrade() -> None:
    drop_event_tables("analytics")
