"""Alembic, per service: each service keeps its history in ``services/<name>/migrations``
and its version table in its own schema.

A service's ``migrations/env.py`` is two lines: import its MetaData and call
``run_migrations(metadata)``. ``upgrade``/``downgrade``/``current_revision`` are used by
the service at start-up (under an advisory lock, so replicas do not race), by
provisioning and by tests.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSION_TABLE = "alembic_version"


def migrations_dir(service: str) -> Path:
    return REPO_ROOT / "services" / service / "migrations"


def alembic_config(service: str, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(service)))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["service"] = service
    return config


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Bring the service's schema to ``revision``; concurrent callers wait for each other."""
    with _migration_lock(service, url):
        command.upgrade(alembic_config(service, url), revision)


def downgrade(service: str, url: str, revision: str = "base") -> None:
    with _migration_lock(service, url):
        command.downgrade(alembic_config(service, url), revision)


def head_revision(service: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(service, "postgresql://")).get_current_head()


def current_revision(service: str, url: str) -> str | None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            ctx = MigrationContext.configure(
                connection, opts={"version_table_schema": service, "version_table": VERSION_TABLE}
            )
            return ctx.get_current_revision()
    finally:
        engine.dispose()


def is_at_head(service: str, url: str) -> bool:
    return current_revision(service, url) == head_revision(service)


class _migration_lock:
    """A PostgreSQL advisory lock held while one process migrates a service's schema."""

    def __init__(self, service: str, url: str) -> None:
        self._key = zlib.crc32(f"stylestudio-migrate-{service}".encode())
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self._connection: sa.Connection | None = None

    def __enter__(self) -> None:
        self._connection = self._engine.connect()
        self._connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self._key})
        self._connection.commit()

    def __exit__(self, *exc: object) -> None:
        assert self._connection is not None
        self._connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        self._connection.commit()
        self._connection.close()
        self._engine.dispose()


def create_event_tables(schema: str) -> None:
    """Version 1 of the outbox and inbox tables, for a service's first migration.

    Frozen: shipped migrations call it, so a change to these tables is a new helper
    used by a new migration, never an edit here.
    """
    from alembic import op

    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True)),
        sa.Column("event_id", sa.Uuid, nullable=False),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        schema=schema,
    )
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.Text, nullable=False),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
        schema=schema,
    )
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"], schema=schema)


def drop_event_tables(schema: str) -> None:
    from alembic import op

    op.drop_table("inbox", schema=schema)
    op.drop_table("outbox", schema=schema)


def run_migrations(metadata: sa.MetaData) -> None:
    """The body of every service's ``env.py`` (online mode only: we always have a database)."""
    config = context.config
    schema = metadata.schema
    assert schema, "a service's MetaData names its schema"
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            version_table_schema=schema,
            include_schemas=False,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
