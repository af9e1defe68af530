"""A dependency that refuses connections: 503 + Retry-After naming it, and recovery by itself.

The platform runs on a database of its own, so refusing connections to it (ALTER DATABASE
... CONNECTION LIMIT 0, PostgreSQL's FATAL "too many connections for database", SQLSTATE
53300, the class the reserved-slots FATAL is in) and ending the billing role's backends in
it (the "connection lost" a restart gives) touches no other test: the roles are the
server's, shared by every test database, so they are left alone. Billing alone is cut off
through a TCP gate between it and PostgreSQL (refused, then dropped mid-session). The
sweeper's interval is an hour: whatever completes here, the saga's own retries completed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from kit.server import LIVENESS
from stylestudio.generation.v1 import resources_pb2
from tests.generation.conftest import GENERATION_ENV, Shopper
from tests.harness import Platform, TestDatabase, free_port, own_database
from tests.harness.platform import _libpq_dsn

OUTAGE_ENV = GENERATION_ENV | {
    "STYLESTUDIO_SWEEPER_INTERVAL_SECONDS": "3600",
    "STYLESTUDIO_GENERATION_DEADLINE_SECONDS": "120",
}


@pytest.fixture(scope="module")
def outage_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


class Gate:
    """A TCP proxy between one service and PostgreSQL that can go down: new connections
    refused, open ones dropped mid-session (what a restarting PostgreSQL does to a pool)."""

    def __init__(self, target: str) -> None:
        url = make_url(target)
        self._host, self._port = url.host or "127.0.0.1", url.port or 5432
        self.port = free_port()
        self.url = url.set(port=self.port).render_as_string(hide_password=False)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()
                self._open.discard(sink)

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture(scope="module")
async def billing_gate(outage_database: TestDatabase) -> AsyncIterator[Gate]:
    gate = Gate(outage_database.service_urls["billing"])
    await gate.up()
    yield gate
    await gate.down()


@pytest.fixture(scope="module")
def billing_probes() -> str:
    """Billing's health-only port, the one the kubelet probes (STYLESTUDIO_HEALTH_ADDR)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
async def gated_platform(
    outage_database: TestDatabase,
    billing_gate: Gate,
    billing_probes: str,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Platform]:
    """The platform, billing reaching PostgreSQL through a gate the test can close."""
    outage_database.service_urls["billing"] = billing_gate.url
    async with Platform(
        outage_database,
        redis_url,
        tmp_path_factory.mktemp("outage"),
        extra_env=OUTAGE_ENV,
        process_env={"billing": {"STYLESTUDIO_HEALTH_ADDR": billing_probes}},
    ) as running:
        await running.start_all()
        yield running


class Refusal:
    """New connections to the platform's database refused; ``role``'s open ones ended."""

    def __init__(self, database: TestDatabase, role: str) -> None:
        self._dsn, self._name, self._role = _libpq_dsn(database.admin_url), database.name, role

    async def _run(self, *statements: str) -> None:
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as admin:
            for statement in statements:
                await admin.execute(statement)  # type: ignore[arg-type]

    async def __aenter__(self) -> Refusal:
        await self._run(
            f'ALTER DATABASE "{self._name}" CONNECTION LIMIT 0',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{self._name}' AND usename = '{self._role}'",
        )
        return self

    async def lift(self) -> None:
        await self._run(f'ALTER DATABASE "{self._name}" CONNECTION LIMIT -1')

    async def __aexit__(self, *_: object) -> None:
        await self.lift()


async def test_a_refused_database_is_503_naming_it_then_recovers_by_itself(gated_platform: Platform) -> None:
    shopper = Shopper(gated_platform)
    await shopper.grant(3)
    headers = {"Authorization": f"Bearer {shopper.token}"}
    async with gated_platform.client() as client:
        assert (await client.get("/v1/billing/balance", headers=headers)).status_code == 200
        async with Refusal(gated_platform.database, "stylestudio_billing") as refusal:
            for _ in range(3):  # the pool's dead connection, then refused new ones
                refused = await client.get("/v1/billing/balance", headers=headers)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "1"
                error = refused.json()["error"]
                assert (error["status"], error["reason"]) == ("UNAVAILABLE", "SERVICE_UNAVAILABLE")
                assert error["details"] == {"dependency": "database"}
                assert error["message"] == "The database is unavailable; try again shortly"
            await refusal.lift()
            answered = await client.get("/v1/billing/balance", headers=headers)
            assert answered.status_code == 200, answered.text
            assert int(answered.json()["balance"]) == 3
    assert "unhandled error" not in gated_platform.logs("billing")


async def _logged(platform: Platform, process: str, *words: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(all(word in line for word in words) for line in platform.logs(process).splitlines()):
        assert time.monotonic() < deadline, f"{process} never logged {words}"
        await asyncio.sleep(0.2)


async def test_a_generation_finishes_once_billing_is_back_without_the_sweeper(
    gated_platform: Platform, billing_gate: Gate
) -> None:
    shopper = Shopper(gated_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a coat [latency:1]")
    began = time.monotonic()
    # Billing's database goes away while the provider runs: the capture that follows is refused.
    await billing_gate.down()
    try:
        await _logged(gated_platform, "billing", "CaptureHold", "code=UNAVAILABLE")
        await _logged(gated_platform, "generation", "retrying after a failure", "generation.finish")
        current = await shopper.get(started.id)
        assert current.status == resources_pb2.PROCESSING, current
    finally:
        await billing_gate.up()
    done = await shopper.wait_terminal(started.id, timeout=30)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert time.monotonic() - began < 40  # the saga's own retries: the sweeper is an hour away
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved, balance.available) == (4, 0, 4)
    assert "unhandled error" not in gated_platform.logs("billing")


async def _probe(health: health_pb2_grpc.HealthStub, service: str) -> str:
    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def _until_readiness(health: health_pb2_grpc.HealthStub, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (current := await _probe(health, "")) != status:
        assert time.monotonic() < deadline, f"readiness still {current}, never {status}"
        await asyncio.sleep(0.2)


async def test_liveness_stays_serving_while_postgresql_is_down_and_readiness_does_not(
    gated_platform: Platform, billing_gate: Gate, billing_probes: str
) -> None:
    """What the kubelet sees during a database outage: billing's pods leave the Service
    (readiness) and are not restarted (liveness); the gateway likewise (/readyz, /healthz)."""
    async with grpc.aio.insecure_channel(billing_probes) as channel, gated_platform.client() as client:
        health = health_pb2_grpc.HealthStub(channel)
        # the module's earlier outages end when their gate opens, billing's readiness a health check later
        await _until_readiness(health, "SERVING")
        assert await _probe(health, LIVENESS) == "SERVING"
        await billing_gate.down()
        try:
            await _until_readiness(health, "NOT_SERVING")
            assert await _probe(health, LIVENESS) == "SERVING"
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["services"]["billing"] == "NOT_SERVING"
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(1.0)  # a few of billing's health checks later: still alive
            assert await _probe(health, LIVENESS) == "SERVING"
        finally:
            await billing_gate.up()
        await _until_readiness(health, "SERVING")
        assert await _probe(health, LIVENESS) == "SERVING"
        assert (await client.get("/readyz")).status_code == 200
    assert gated_platform.processes["billing"].poll() is None, "never restarted"
