"""The audit log: ``audit_events``, one row per security event (kit/audit.py), keyed by the
event id; read newest first, by actor or by action (GET /v1/admin/audit), and purged after
the retention (``AUDIT_RETENTION_DAYS``) by the service.

Revision ID: analytics_0005
Revises: analytics_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "analytics_0005"
down_revision = "analytics_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE analytics.audit_events (
            id uuid PRIMARY KEY,
            created_at timestamptz NOT NULL,
            action text NOT NULL,
            actor text NOT NULL,
            acting_service text NOT NULL DEFAULT '',
            target text NOT NULL DEFAULT '',
            client_address inet,
            user_agent text,
            details jsonb NOT NULL DEFAULT '{}'::jsonb,
            source text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX ix_audit_events_created ON analytics.audit_events (created_at DESC, id DESC)")
    op.execute(
        "CREATE INDEX ix_audit_events_actor_created"
        " ON analytics.audit_events (actor, created_at DESC, id DESC)"
    )
    op.execute(
        "CREATE INDEX ix_audit_events_action_created"
        " ON analytics.audit_events (action, created_at DESC, id DESC)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE analytics.audit_events")
