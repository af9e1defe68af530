"""The connection budget (kit/budget.py, docs/operations.md): a service warns, naming the numbers,
when its pool may not fit the server's slots; make run sizes the five pools to fit."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kit.budget import (
    KIT_CONNECTIONS,
    PoolSize,
    SearchPathMismatch,
    ServerSlots,
    check_service,
    fit_pools,
    platform_connections,
    service_budget_problem,
)
from kit.db import Database
from kit.launcher import platform_children, pool_env, service_pool, size_pools
from kit.settings import SERVICES, PlatformSettings
from tests.harness import TestDatabase
from tests.kit.note_service import running_note_service

STOCK = ServerSlots(max_connections=100, superuser_reserved_connections=3)


def test_the_default_pools_fit_a_stock_server_twice_over() -> None:
    pools = {name: service_pool(name) for name in SERVICES}
    one_platform = platform_connections(pools)
    assert 2 * one_platform <= STOCK.available == 97, pools
    for name, pool in pools.items():  # and no service alone exceeds its fair share of the slots
        assert service_budget_problem(pool, STOCK, PlatformSettings()) is None, name


def test_the_warning_names_every_number() -> None:
    problem = service_budget_problem(PoolSize(10, 20), ServerSlots(100, 3, 2, in_use=40), PlatformSettings())
    assert problem is not None
    message, numbers = problem
    assert f"may open {10 + 20 + KIT_CONNECTIONS} connections" in message
    assert "STYLESTUDIO_DB_POOL_SIZE 10 + STYLESTUDIO_DB_MAX_OVERFLOW 20" in message
    assert "fair share of 19" in message  # (100 - 3 - 2) // 5 processes
    assert "max_connections 100 - superuser_reserved_connections 3 - reserved_connections 2 = 95" in message
    assert "40 in use now" in message
    assert numbers["available"] == 95 and numbers["budget"] == 19
    # An explicit budget (PgBouncer in front, or the launcher's share) replaces the fair share.
    settings = PlatformSettings(db_connection_budget=40)
    assert service_budget_problem(PoolSize(10, 20), STOCK, settings) is None
    explicit = service_budget_problem(PoolSize(30, 20), STOCK, settings)
    assert explicit is not None and "its budget of 40 (STYLESTUDIO_DB_CONNECTION_BUDGET)" in explicit[0]


async def test_a_service_started_with_a_pool_the_server_cannot_hold_warns(
    kit_database: TestDatabase, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stylestudio.budget")
    url = kit_database.service_urls["analytics"]
    async with running_note_service(url, redis_url, InMemorySpanExporter(), db_pool_size=200):
        pass
    (warning,) = [record for record in caplog.records if record.name == "stylestudio.budget"]
    assert "may open 203 connections (STYLESTUDIO_DB_POOL_SIZE 200 + STYLESTUDIO_DB_MAX_OVERFLOW 2" in (
        warning.getMessage()
    )
    assert "more than the server's slots on its own" in warning.getMessage()
    assert warning.__dict__["max_connections"] > 0


async def test_a_service_whose_connections_do_not_resolve_to_its_schema_does_not_start(
    kit_database: TestDatabase,
) -> None:
    # The analytics role has no right on a billing schema: unqualified names would find nothing.
    db = Database(kit_database.service_urls["analytics"], "billing", pool_size=1, max_overflow=0)
    try:
        with pytest.raises(SearchPathMismatch, match="resolve to"):
            await check_service(db, PlatformSettings())
    finally:
        await db.dispose()


def test_the_launcher_sizes_the_pools_to_fit_the_free_slots() -> None:
    wanted = {name: PoolSize(10, 20) for name in SERVICES}
    floors = {name: service_pool(name, PoolSize(1, 0)) for name in SERVICES}
    assert floors["generation"].pool_size > 1, "generation's pool covers its workers"
    wanted["generation"] = service_pool("generation", PoolSize(10, 20))
    for max_connections, in_use in ((100, 1), (60, 1), (100, 60), (40, 1)):
        slots = ServerSlots(max_connections, 3, in_use=in_use)
        free = slots.available - (in_use - 1)
        pools, line, alarm = size_pools(wanted, floors, slots)
        assert not alarm, line
        assert platform_connections(pools) <= free, (max_connections, pools)
        for name, pool in pools.items():
            assert floors[name].connections <= pool.connections <= wanted[name].connections
        assert f"{free} free" in line
    # Cuts fall on the largest pools first: a small pool keeps what it has while it can.
    ones = {"a": PoolSize(1, 0), "b": PoolSize(1, 0)}
    assert fit_pools({"a": PoolSize(20, 0), "b": PoolSize(4, 0)}, ones, 12) == {
        "a": PoolSize(6, 0),
        "b": PoolSize(4, 0),
    }
    assert fit_pools({"a": PoolSize(20, 0), "b": PoolSize(4, 0)}, ones, 8) == {
        "a": PoolSize(3, 0),
        "b": PoolSize(3, 0),
    }
    assert fit_pools({"a": PoolSize(4, 2)}, {"a": PoolSize(1, 0)}, 5) == {"a": PoolSize(4, 0)}, (
        "overflow first"
    )
    # Too few slots even for the smallest pools: a warning, and the smallest pools.
    pools, line, alarm = size_pools(wanted, floors, ServerSlots(15, 3, in_use=1))
    assert alarm and "may run out of connections" in line
    assert pools == floors


def test_the_launcher_passes_each_service_its_pool_and_budget(tmp_path: object) -> None:
    class Infra:
        database_url = "postgresql+psycopg://postgres@127.0.0.1/x"
        redis_url = "redis://127.0.0.1/0"

    pools = {name: PoolSize(3, 1) for name in SERVICES}
    children = platform_children({}, Infra(), {name: f"url-{name}" for name in SERVICES}, pools)  # type: ignore[arg-type]
    for child in children[:-1]:
        assert {key: child.env[key] for key in pool_env(pools[child.name])} == {
            "STYLESTUDIO_DB_POOL_SIZE": "3",
            "STYLESTUDIO_DB_MAX_OVERFLOW": "1",
            "STYLESTUDIO_DB_CONNECTION_BUDGET": str(3 + 1 + KIT_CONNECTIONS),
        }
    assert "STYLESTUDIO_DB_POOL_SIZE" not in children[-1].env  # the gateway has no database
