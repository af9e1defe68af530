"""The usage log: ``usage_records``, partitioned by month on ``created_at``.

Partitions are not created here: the service creates the current month's and the
next ones at start-up and ahead of time (partitions.py), and drops expired ones.

Revision ID: analytics_0002
Revises: analytics_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "analytics_0002"
down_revision = "analytics_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE analytics.usage_records (
            id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            user_id text NOT NULL,
            action text NOT NULL,
            source text NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
            session_id text,
            ip_address inet,
            user_agent text,
            model text,
            style text,
            reason text,
            tokens bigint,
            processing_ms bigint,
            CONSTRAINT pk_usage_records PRIMARY KEY (id, created_at)
        ) PARTITION BY RANGE (created_at)
        """
    )
    op.execute(
        "CREATE INDEX ix_usage_records_user_created"
        " ON analytics.usage_records (user_id, created_at DESC, id DESC)"
    )
    op.execute(
        "CREATE INDEX ix_usage_records_user_action_created"
        " ON analytics.usage_records (user_id, action, created_at DESC, id DESC)"
    )
    op.execute(
        "CREATE INDEX ix_usage_records_action_created"
        " ON analytics.usage_records (action, created_at) INCLUDE (model, style, reason, tokens)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE analytics.usage_records")
