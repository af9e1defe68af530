"""Synthetic traffic: ``usage_records.synthetic`` and ``usage_daily.synthetic`` (part of its key).

Load tests mark their requests with W3C baggage ``stylestudio.synthetic=true``; the records
they cause are kept, marked, and left out of the platform-wide analytics unless asked for.
The (action, created_at) index includes the mark, so the system analytics' edge days stay
index-only scans. Existing records are not synthetic (the column's default).

Revision ID: analytics_0004
Revises: analytics_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "analytics_0004"
down_revision = "analytics_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE analytics.usage_records ADD COLUMN synthetic boolean NOT NULL DEFAULT false")
    op.execute("DROP INDEX analytics.ix_usage_records_action_created")
    op.execute(
        "CREATE INDEX ix_usage_records_action_created ON analytics.usage_records (action, created_at)"
        " INCLUDE (model, style, reason, tokens, synthetic)"
    )
    op.execute("ALTER TABLE analytics.usage_daily ADD COLUMN synthetic boolean NOT NULL DEFAULT false")
    op.execute(
        "ALTER TABLE analytics.usage_daily DROP CONSTRAINT pk_usage_daily,"
        " ADD CONSTRAINT pk_usage_daily PRIMARY KEY (action, day, model, style, reason, synthetic)"
    )


def downgrade() -> None:
    # Synthetic rollup rows are folded into the others, as before the mark existed.
    op.execute(
        """
        CREATE TEMPORARY TABLE usage_daily_folded ON COMMIT DROP AS
        SELECT day, action, model, style, reason, sum(records) AS records, sum(tokens) AS tokens
        FROM analytics.usage_daily GROUP BY 1, 2, 3, 4, 5
        """
    )
    op.execute("DELETE FROM analytics.usage_daily")
    op.execute("ALTER TABLE analytics.usage_daily DROP CONSTRAINT pk_usage_daily")
    op.execute("ALTER TABLE analytics.usage_daily DROP COLUMN synthetic")
    op.execute(
        "ALTER TABLE analytics.usage_daily ADD CONSTRAINT pk_usage_daily"
        " PRIMARY KEY (action, day, model, style, reason)"
    )
    op.execute(
        "INSERT INTO analytics.usage_daily (day, action, model, style, reason, records, tokens)"
        " SELECT day, action, model, style, reason, records, tokens FROM usage_daily_folded"
    )
    op.execute("DROP INDEX analytics.ix_usage_records_action_created")
    op.execute(
        "CREATE INDEX ix_usage_records_action_created ON analytics.usage_records (action, created_at)"
        " INCLUDE (model, style, reason, tokens)"
    )
    op.execute("ALTER TABLE analytics.usage_records DROP COLUMN synthetic")
