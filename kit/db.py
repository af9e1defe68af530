"""Async SQLAlchemy 2 on psycopg 3, one schema per service, one role per service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from kit.bootstrap import role_name

# Constraint names Alembic can rely on when a later migration alters them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(schema: str) -> MetaData:
    """The MetaData for a service's tables: every table lives in the service's own schema."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


_AFTER_COMMIT = "stylestudio.after_commit"


def after_commit(connection: AsyncConnection, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the transaction ``connection`` is in has committed (not on rollback)."""
    connection.info.setdefault(_AFTER_COMMIT, set()).add(callback)


def connect_args(url: str, schema: str, *, prepared_statements: bool = True) -> dict[str, Any]:
    """psycopg's connection arguments for a service's engine.

    search_path is the second fence: unqualified names can only mean this service's tables.
    The service's own role carries it (``ALTER ROLE ... SET search_path``, kit/bootstrap.py),
    which survives PgBouncer's transaction pooling; any other role (the admin URL a service
    falls back to without STYLESTUDIO_SERVICE_DATABASE_URL) gets it as the ``options`` start-up
    parameter, which PgBouncer 1.18 refuses and PostgreSQL itself accepts.
    ``prepared_statements=False``: psycopg never prepares a statement on the server (behind
    PgBouncer in transaction mode before 1.21, the next transaction may run on another server
    connection, where the statement does not exist).
    """
    arguments: dict[str, Any] = {}
    if make_url(url).username != role_name(schema):
        arguments["options"] = f"-c search_path={schema}"
    if not prepared_statements:
        arguments["prepare_threshold"] = None
    return arguments


class Database:
    """The engine of one service, confined to its schema.

    Transactions run on Core connections, not ORM sessions: the services write SQL
    (tables and statements), never mapped objects, and a Session added ~130 us of
    bookkeeping to every transaction for nothing they use.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        *,
        pool_size: int = 4,
        max_overflow: int = 2,
        pre_ping: bool = False,
        prepared_statements: bool = True,
    ) -> None:
        self.schema = schema
        self.pool_size, self.max_overflow = pool_size, max_overflow
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            # A ping per checkout costs a round trip per transaction; a connection broken by a
            # database restart fails one call and is discarded, and health turns NOT_SERVING.
            pool_pre_ping=pre_ping,
            # An error's text never carries the row it was writing (user ids, addresses, prompts);
            # kit.logs.describe_error keeps the statement out of logs and spans as well.
            hide_parameters=True,
            connect_args=connect_args(url, schema, prepared_statements=prepared_statements),
        )

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on success, rolled back on any error."""
        async with self.engine.connect() as connection:
            # Held from the start: after a lost connection, reading ``connection.info`` would try
            # to reconnect synchronously (MissingGreenlet) and hide the database's own error.
            info = connection.info
            try:
                async with connection.begin():
                    yield connection
            except BaseException:
                info.pop(_AFTER_COMMIT, None)
                raise
            for callback in info.pop(_AFTER_COMMIT, ()):
                callback()

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection on which every statement is its own transaction: no BEGIN/COMMIT round
        trips, for work that one statement (CTEs included) does atomically."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
