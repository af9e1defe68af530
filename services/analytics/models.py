"""The analytics service's tables, all in the ``analytics`` schema.

``usage_records`` is the usage log: one row per action, partitioned by month on
``created_at`` (partitions ``usage_records_pYYYYMM`` are created ahead and dropped
after the retention by the service, see partitions.py). Its primary key includes
the partition key, as PostgreSQL requires; for records that come from events the id
is the event id and ``created_at`` its ``occurred_at``, so a redelivered event hits
the same key and is recorded once.

The facts the analytics aggregate (model, style, error reason, tokens, processing
time) are typed columns, so SQL sums and percentiles read them without parsing
JSON; ``metadata`` keeps the record's facts for display.

``audit_events`` is the audit log (migration 0005): security events every service records
through its outbox (kit/audit.py), keyed by the event id so a redelivered one is stored once,
deleted after ``AUDIT_RETENTION_DAYS`` by the service (audit_log.py).

``usage_daily`` rolls the log up per UTC day, action, model, style, error reason
(empty string for none, so the key has no NULLs) and synthetic mark: kept by the same statement that
inserts the records it counts, read by the system analytics for whole days.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from kit.db import service_metadata
from kit.events import event_tables

metadata = service_metadata("analytics")
outbox, inbox = event_tables(metadata)

usage_records = sa.Table(
    "usage_records",
    metadata,
    sa.Column("id", sa.Uuid, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    # "client" for LogUserAction, else the publishing service.
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("metadata", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("session_id", sa.Text),
    sa.Column("ip_address", postgresql.INET),
    sa.Column("user_agent", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("style", sa.Text),
    sa.Column("reason", sa.Text),
    # Tokens the action moved (purchased, granted, spent by a generation, refunded).
    sa.Column("tokens", sa.BigInteger),
    sa.Column("processing_ms", sa.BigInteger),
    # Load-test traffic (W3C baggage stylestudio.synthetic=true); migration 0004.
    sa.Column("synthetic", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.PrimaryKeyConstraint("id", "created_at", name="pk_usage_records"),
    sa.Index("ix_usage_records_user_created", "user_id", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index(
        "ix_usage_records_user_action_created",
        "user_id",
        "action",
        sa.text("created_at DESC"),
        sa.text("id DESC"),
    ),
    sa.Index(
        "ix_usage_records_action_created",
        "action",
        "created_at",
        postgresql_include=["model", "style", "reason", "tokens", "synthetic"],
    ),
    postgresql_partition_by="RANGE (created_at)",
)

usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False, server_default=""),
    sa.Column("style", sa.Text, nullable=False, server_default=""),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("synthetic", sa.Boolean, nullable=False, server_default=sa.false()),
    # Action first: the analytics ask for a few actions over a range of days.
    sa.PrimaryKeyConstraint("action", "day", "model", "style", "reason", "synthetic", name="pk_usage_daily"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),  # the event id
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    # A user id, or a service identity acting for itself ("operator"); "" for nobody signed in.
    sa.Column("actor", sa.Text, nullable=False),
    # The service that acted for the actor (a user), else "".
    sa.Column("acting_service", sa.Text, nullable=False, server_default=""),
    sa.Column("target", sa.Text, nullable=False, server_default=""),
    sa.Column("client_address", postgresql.INET),
    sa.Column("user_agent", sa.Text),
    sa.Column("details", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    # The service that recorded it.
    sa.Column("source", sa.Text, nullable=False),
    sa.Index("ix_audit_events_created", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index("ix_audit_events_actor_created", "actor", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index("ix_audit_events_action_created", "action", sa.text("created_at DESC"), sa.text("id DESC")),
)
