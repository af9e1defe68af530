"""The usage log's daily rollup: ``usage_daily``, one row per UTC day, action, model, style
and error reason with how many records and tokens, kept by the write path in the same
statement as the records it counts (only records really inserted are counted, so a
redelivered event is counted once). The system analytics read it for whole days.

Existing records are rolled up here, so an upgraded database answers the same numbers.

Revision ID: analytics_0003
Revises: analytics_0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "analytics_0003"
down_revision = "analytics_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE analytics.usage_daily (
            day date NOT NULL,
            action text NOT NULL,
            model text NOT NULL DEFAULT '',
            style text NOT NULL DEFAULT '',
            reason text NOT NULL DEFAULT '',
            records bigint NOT NULL,
            tokens bigint NOT NULL,
            CONSTRAINT pk_usage_daily PRIMARY KEY (action, day, model, style, reason)
        )
        """
    )
    op.execute(
        """
        INSERT INTO analytics.usage_daily (day, action, model, style, reason, records, tokens)
        SELECT (created_at AT TIME ZONE 'UTC')::date, action, coalesce(model, ''), coalesce(style, ''),
               coalesce(reason, ''), count(*), coalesce(sum(tokens), 0)
        FROM analytics.usage_records
        GROUP BY 1, 2, 3, 4, 5
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE analytics.usage_daily")
