"""Accounts, provider links, sessions, refresh tokens, API keys and signing keys.

Revision ID: users_0002
Revises: users_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "users_0002"
down_revision = "users_0001"
branch_labels = None
depends_on = None

SCHEMA = "users"


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("image_url", sa.Text, nullable=False, server_default=""),
        sa.Column("plan", sa.Text, nullable=False, server_default="free"),
        sa.Column("role", sa.Text, nullable=False, server_default="user"),
        sa.Column("password_hash", sa.Text),
        _created_at(),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("email", name="uq_users_email"),
        sa.CheckConstraint("plan IN ('free', 'basic', 'pro', 'enterprise')", name="ck_users_plan"),
        sa.CheckConstraint("role IN ('user', 'admin')", name="ck_users_role"),
        schema=SCHEMA,
    )
    op.create_table(
        "oauth_accounts",
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("user_id", sa.Uuid, nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("provider", "subject", name="pk_oauth_accounts"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.users.id"], name="fk_oauth_accounts_user_id_users", ondelete="CASCADE"
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_oauth_accounts_user_id", "oauth_accounts", ["user_id"], schema=SCHEMA)
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Uuid, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("ip", sa.Text, nullable=False, server_default=""),
        sa.Column("user_agent", sa.Text, nullable=False, server_default=""),
        _created_at(),
        sa.Column("last_refreshed_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_reason", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.users.id"], name="fk_sessions_user_id_users", ondelete="CASCADE"
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"], schema=SCHEMA)
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.LargeBinary, nullable=False),
        sa.Column("session_id", sa.Uuid, nullable=False),
        _created_at(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["users.sessions.id"],
            name="fk_refresh_tokens_session_id_sessions",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"], schema=SCHEMA)
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Uuid, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.LargeBinary, nullable=False),
        sa.Column("idempotency_key", sa.Text),
        _created_at(),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("secret_hash", name="uq_api_keys_secret_hash"),
        sa.UniqueConstraint("user_id", "idempotency_key", name="uq_api_keys_user_id_idempotency_key"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.users.id"], name="fk_api_keys_user_id_users", ondelete="CASCADE"
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_api_keys_user_id_created_at", "api_keys", ["user_id", "created_at"], schema=SCHEMA)
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),
        _created_at(),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("signing_keys", "api_keys", "refresh_tokens", "sessions", "oauth_accounts", "users"):
        op.drop_table(table, schema=SCHEMA)
