"""The platform behind PgBouncer in transaction-pooling mode (Debian's 1.18, `make pgbouncer`):
each service's pool goes through it, migrations go straight to PostgreSQL (a session advisory
lock), psycopg prepares nothing on the server (STYLESTUDIO_DB_PREPARED_STATEMENTS=false) and
each role's search_path comes from ALTER ROLE, not the `options` start-up parameter PgBouncer
1.18 refuses. docs/operations.md."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from kit.bootstrap import role_name
from kit.db import connect_args
from tests.generation.conftest import png
from tests.harness import SERVICES, Platform, TestDatabase, own_database
from tests.harness.pgbouncer import PgBouncer, running_pgbouncer
from tests.harness.rest import sign_up
from tests.harness.roles import libpq_dsn

TERMINAL = ("COMPLETED", "FAILED", "CANCELED")


@pytest.fixture(scope="module")
def database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as own:
        yield own


@pytest.fixture(scope="module")
def bouncer(database: TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    with running_pgbouncer(database, tmp_path_factory.mktemp("pgbouncer")) as running:
        yield running


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.2)
    return result


async def test_a_journey_through_the_gateway_with_every_service_behind_pgbouncer(
    bouncer: PgBouncer, database: TestDatabase, redis_url: str, tmp_path: Path
) -> None:
    behind = {
        service: {
            "STYLESTUDIO_SERVICE_DATABASE_URL": bouncer.url(service),
            "STYLESTUDIO_MIGRATION_DATABASE_URL": database.service_urls[service],
        }
        for service in SERVICES
    }
    settings = {"STYLESTUDIO_DB_PREPARED_STATEMENTS": "false", "STYLESTUDIO_MIGRATE_ON_START": "true"}
    async with Platform(database, redis_url, tmp_path, settings, process_env=behind) as platform:
        await platform.start_all()
        async with platform.client() as rest:
            await _journey(rest)
        logs = {process: platform.logs(process) for process in (*SERVICES, "gateway")}
    log = bouncer.log()
    for service in SERVICES:
        assert f"login attempt: db={database.name} user={role_name(service)}" in log, service
        assert "prepared statement" not in logs[service], logs[service][-3000:]
        assert "database connection budget" not in logs[service]
    assert "unsupported startup parameter" not in log


async def _journey(rest: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {(await sign_up(rest))['accessToken']}"}
    uploaded = await rest.post(
        "/v1/files",
        headers=auth,
        data={"category": "product_image"},
        files={"file": ("dress.png", png("navy"), "image/png")},
    )
    assert uploaded.status_code == 200, uploaded.text
    body = {
        "productImageFiles": [uploaded.json()["id"]],
        "prompt": "a navy dress on a model",
        "parameters": {"quality": "draft"},
    }

    async def started() -> httpx.Response | None:
        # The welcome grant arrives through an event: until then the wallet cannot pay.
        response = await rest.post("/v1/generations", json=body, headers=auth)
        assert response.status_code < 500, response.text
        return response if response.status_code == 200 else None

    generation = (await eventually(started)).json()

    async def finished() -> dict[str, Any] | None:
        response = await rest.get(f"/v1/generations/{generation['id']}", headers=auth)
        assert response.status_code == 200, response.text
        current = dict(response.json())
        return current if current["status"] in TERMINAL else None

    done = await eventually(finished)
    assert done["status"] == "COMPLETED", done
    balance = await rest.get("/v1/billing/balance", headers=auth)
    assert balance.status_code == 200, balance.text
    # The welcome tokens less the generation's price, captured once the images were stored.
    assert 0 <= int(balance.json()["balance"]) < 10
    assert int(balance.json()["reserved"]) == 0
    # Reads in bursts: each statement runs many times on each pooled connection (psycopg would
    # prepare it from the 5th) while PgBouncer moves the connections' transactions between its
    # fewer server connections.
    for _ in range(4):
        reads = await asyncio.gather(
            *(
                rest.get(path, headers=auth)
                for path in ("/v1/billing/balance", "/v1/generations", "/v1/files", "/v1/users/me") * 6
            )
        )
        assert [response.status_code for response in reads] == [200] * len(reads), [
            response.text for response in reads if response.status_code != 200
        ]


def _connect(bouncer: PgBouncer, service: str, **arguments: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_dsn(bouncer.url(service)), autocommit=True, **arguments)


def test_why_prepared_statements_are_a_setting(bouncer: PgBouncer) -> None:
    # Two clients of one role, one statement each, in turn: PgBouncer hands both the server
    # connection used last, where psycopg's automatic prepare (from the 5th run) of one client
    # finds the other's statement of the same name already there.
    statement = "SELECT count(*) FROM outbox WHERE stream = %s"
    first, second = _connect(bouncer, "billing"), _connect(bouncer, "billing")
    try:
        with pytest.raises(psycopg.Error, match="prepared statement"):
            for _ in range(8):
                for connection in (first, second):
                    connection.execute(statement, ["x"]).fetchone()
    finally:
        first.close()
        second.close()
    off = connect_args(bouncer.url("billing"), "billing", prepared_statements=False)
    first, second = _connect(bouncer, "billing", **off), _connect(bouncer, "billing", **off)
    try:
        for _ in range(8):
            for connection in (first, second):
                assert connection.execute(statement, ["x"]).fetchone() == (0,)
    finally:
        first.close()
        second.close()


def test_search_path_survives_pooling_and_the_options_parameter_is_refused(bouncer: PgBouncer) -> None:
    # What kit.db used to send: PgBouncer 1.18 refuses the start-up parameter.
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter"):
        _connect(bouncer, "files", options="-c search_path=files").close()
    # The role's own search_path (ALTER ROLE, kit/bootstrap.py) holds on every server connection.
    assert connect_args(bouncer.url("files"), "files") == {}
    with _connect(bouncer, "files") as connection:
        for _ in range(5):
            assert connection.execute("SELECT current_schemas(false)").fetchone() == (["files"],)
