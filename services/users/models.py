"""The users service's tables, all in the ``users`` schema."""

from __future__ import annotations

import sqlalchemy as sa

from kit.db import service_metadata
from kit.events import event_tables

metadata = service_metadata("users")
outbox, inbox = event_tables(metadata)


def _created_at() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    # Stored normalised (trimmed, lower case), so the unique constraint is case-insensitive.
    sa.Column("email", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("image_url", sa.Text, nullable=False, server_default=""),
    sa.Column("plan", sa.Text, nullable=False, server_default="free"),
    sa.Column("role", sa.Text, nullable=False, server_default="user"),
    # NULL for accounts that only ever signed in with a provider.
    sa.Column("password_hash", sa.Text),
    _created_at(),
    sa.Column("last_login_at", sa.DateTime(timezone=True)),
    # Bumped with every change of role, plan, sessions or API keys: orders the copies of the
    # user's credential state in Redis (services/users/credentials.py).
    sa.Column("credentials_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("plan IN ('free', 'basic', 'pro', 'enterprise')", name="plan"),
    sa.CheckConstraint("role IN ('user', 'admin')", name="role"),
)

oauth_accounts = sa.Table(
    "oauth_accounts",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    # The provider's stable id of the person ("sub" for Google, the numeric id for GitHub).
    sa.Column("subject", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.users.id", ondelete="CASCADE"), nullable=False),
    _created_at(),
    sa.Index("ix_oauth_accounts_user_id", "user_id"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.users.id", ondelete="CASCADE"), nullable=False),
    # "password", "google" or "github".
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("ip", sa.Text, nullable=False, server_default=""),
    sa.Column("user_agent", sa.Text, nullable=False, server_default=""),
    _created_at(),
    sa.Column("last_refreshed_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    # "logout", "refresh_reuse".
    sa.Column("revoked_reason", sa.Text),
    sa.Index("ix_sessions_user_id", "user_id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    # SHA-256 of the opaque token: a database leak yields nothing usable.
    sa.Column("token_hash", sa.LargeBinary, primary_key=True),
    sa.Column("session_id", sa.Uuid, sa.ForeignKey("users.sessions.id", ondelete="CASCADE"), nullable=False),
    _created_at(),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    # Set when the token was traded for a new pair; presenting it again means theft.
    sa.Column("used_at", sa.DateTime(timezone=True)),
    sa.Index("ix_refresh_tokens_session_id", "session_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False, unique=True),
    # The Idempotency-Key of the request that created it: the same key never creates twice.
    sa.Column("idempotency_key", sa.Text),
    _created_at(),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Index("ix_api_keys_user_id_created_at", "user_id", "created_at"),
    sa.UniqueConstraint("user_id", "idempotency_key", name="uq_api_keys_user_id_idempotency_key"),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.Text, primary_key=True),
    # PKCS#8 PEM of the EC P-256 private key.
    sa.Column("private_pem", sa.Text, nullable=False),
    _created_at(),
    # The newest key not retired signs; retired keys stay published until their tokens expired.
    sa.Column("retired_at", sa.DateTime(timezone=True)),
)
