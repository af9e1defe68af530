"""The connection budget: the PostgreSQL connections the platform's processes may hold, against
the slots the server has for them (docs/operations.md).

A process may hold ``pool_size + max_overflow`` pooled connections plus ``KIT_CONNECTIONS``
the kit opens beside the pool. The server has ``max_connections - superuser_reserved_connections
- reserved_connections`` (PostgreSQL 16+) slots for every client that is not a superuser; when
they are gone, a new connection fails with "remaining connection slots are reserved".

- Each service, at start-up (``check_service``): reads the server's settings, compares its own
  maximum with its budget (``STYLESTUDIO_DB_CONNECTION_BUDGET``, else a fair share: the slots
  divided by ``STYLESTUDIO_DB_PROCESSES``) and logs a warning naming the numbers when it does
  not fit. It also checks the second fence: unqualified names resolve to its schema only.
- ``make run`` (kit/launcher.py), which knows all five: ``fit_pools`` shrinks the pools until
  the platform's sum fits the slots, passes them to the children, or warns when it cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kit.settings import PlatformSettings

log = logging.getLogger("stylestudio.budget")

# Beside its pool, a process opens one connection at a time: a migration's (Alembic's, while the
# advisory lock's connection is open, before the pool exists) or the readiness check's schema
# version check (until the schema is at head).
KIT_CONNECTIONS = 1

_SLOTS_SQL = sa.text(
    """
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int,
           coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int,
           (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int,
           current_schemas(false)
    """
)


@dataclass(frozen=True)
class PoolSize:
    """One process's pool: its size and overflow."""

    pool_size: int
    max_overflow: int

    @property
    def connections(self) -> int:
        """The most server connections the process may hold (its pool's and the kit's)."""
        return self.pool_size + self.max_overflow + KIT_CONNECTIONS

    def describe(self) -> str:
        return f"{self.pool_size}+{self.max_overflow}"


@dataclass(frozen=True)
class ServerSlots:
    """The server's connection settings, and how many client connections it has now."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int = 0
    in_use: int = 0

    @property
    def available(self) -> int:
        """Connections a role that is not a superuser may open."""
        return self.max_connections - self.superuser_reserved_connections - self.reserved_connections

    def describe(self) -> str:
        reserved = f" - reserved_connections {self.reserved_connections}" if self.reserved_connections else ""
        return (
            f"max_connections {self.max_connections} - superuser_reserved_connections "
            f"{self.superuser_reserved_connections}{reserved} = {self.available} slots"
        )


def _slots(row: Any) -> ServerSlots:
    return ServerSlots(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def read_server_slots(url: str) -> ServerSlots:
    """The slots of the server at ``url`` (one short connection)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            return _slots(connection.execute(_SLOTS_SQL).one())
    finally:
        engine.dispose()


class SearchPathMismatch(RuntimeError):
    """The service's connections would resolve unqualified names outside its schema."""


def service_budget_problem(
    pool: PoolSize, slots: ServerSlots, settings: PlatformSettings
) -> tuple[str, dict[str, Any]] | None:
    """Why this process's pool may not fit (a message naming the numbers), or None."""
    explicit = settings.db_connection_budget
    budget = explicit or max(slots.available // settings.db_processes, 0)
    wanted = pool.connections
    if wanted <= budget and wanted <= slots.available:
        return None
    if explicit:
        share = f"its budget of {budget} (STYLESTUDIO_DB_CONNECTION_BUDGET)"
    else:
        share = (
            f"its fair share of {budget} (the server's {slots.available} slots shared by "
            f"STYLESTUDIO_DB_PROCESSES={settings.db_processes} processes)"
        )
    alone = " and more than the server's slots on its own" if wanted > slots.available else ""
    message = (
        f"database connection budget: this process may open {wanted} connections "
        f"(STYLESTUDIO_DB_POOL_SIZE {pool.pool_size} + STYLESTUDIO_DB_MAX_OVERFLOW {pool.max_overflow}"
        f" + {KIT_CONNECTIONS} for migrations and readiness checks), more than {share}{alone}; the "
        f"server has {slots.describe()}, {slots.in_use} in use now. Lower the pool, give each process "
        "its share with STYLESTUDIO_DB_CONNECTION_BUDGET, or put PgBouncer in front (docs/operations.md)"
    )
    numbers = {
        "connections": wanted,
        "budget": budget,
        "db_pool_size": pool.pool_size,
        "db_max_overflow": pool.max_overflow,
        "max_connections": slots.max_connections,
        "superuser_reserved_connections": slots.superuser_reserved_connections,
        "reserved_connections": slots.reserved_connections,
        "available": slots.available,
        "in_use": slots.in_use,
    }
    return message, numbers


async def check_service(db: Any, settings: PlatformSettings) -> ServerSlots:
    """At a service's start-up, on one of its pool's connections: refuse a search_path that is
    not the service's schema alone, warn when its pool may not fit its budget."""
    async with db.engine.connect() as connection:
        row = (await connection.execute(_SLOTS_SQL)).one()
    schemas = list(row[4])
    if schemas != [db.schema]:
        raise SearchPathMismatch(
            f"unqualified names on the service's connections resolve to {schemas}, not [{db.schema!r}]: "
            f"provision the database (python -m kit.bootstrap sets each role's search_path) and connect "
            f"with the service's own role (STYLESTUDIO_SERVICE_DATABASE_URL)"
        )
    slots = _slots(row)
    problem = service_budget_problem(PoolSize(db.pool_size, db.max_overflow), slots, settings)
    if problem is not None:
        message, numbers = problem
        log.warning(message, extra=numbers)
    return slots


def platform_connections(pools: Mapping[str, PoolSize], replicas: Mapping[str, int] | None = None) -> int:
    """The docs' sum: over the services, replicas x (pool_size + max_overflow + the kit's one)."""
    return sum((replicas or {}).get(name, 1) * pool.connections for name, pool in pools.items())


def fit_pools(
    wanted: Mapping[str, PoolSize], floors: Mapping[str, PoolSize], budget: int
) -> dict[str, PoolSize]:
    """Pools no larger than ``wanted`` whose sum fits ``budget`` when it can: one connection at a
    time off the largest pool still above its floor (its overflow first, then its size), so the
    cuts fall on the largest first and the smallest keep what they have. A pool never goes below
    its floor (``floors``: the smallest each service accepts, e.g. generation's workers); the result
    exceeds ``budget`` only when the floors do."""
    sized = dict(wanted)
    while platform_connections(sized) > budget:
        shrinkable = [name for name, pool in sized.items() if pool.connections > floors[name].connections]
        if not shrinkable:
            break
        name = max(shrinkable, key=lambda n: (sized[n].connections, n))
        pool, floor = sized[name], floors[name]
        if pool.max_overflow > floor.max_overflow:
            sized[name] = PoolSize(pool.pool_size, pool.max_overflow - 1)
        elif pool.pool_size > floor.pool_size:
            sized[name] = PoolSize(pool.pool_size - 1, pool.max_overflow)
        else:  # the floor has the larger overflow: nothing left to take
            floors = {**floors, name: pool}
    return sized
