"""Start-up and shutdown of a service built from the kit, as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kit.clients import open_channel
from kit.server import LIVENESS, SERVER_OPTIONS, RunningService
from services.analytics.settings import AnalyticsSettings
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.harness import TestDatabase, free_port, own_database
from tests.harness.identities import Keyring
from tests.harness.platform import REPO_ROOT
from tests.kit.note_service import create_notes_table, definition


@pytest.fixture
def sigterm_database(infrastructure: object) -> Iterator[TestDatabase]:
    """Its own database: the note its in-flight call writes must not reach the kit tests' outbox."""
    with own_database(infrastructure, ["analytics"]) as database:
        yield database


async def test_sigterm_lets_an_in_flight_rpc_finish(
    sigterm_database: TestDatabase, redis_url: str, tmp_path
) -> None:
    url = sigterm_database.service_urls["analytics"]
    await create_notes_table(url)
    addr = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "STYLESTUDIO_ANALYTICS_ADDR": addr,
        "STYLESTUDIO_SERVICE_DATABASE_URL": url,
        "STYLESTUDIO_REDIS_URL": redis_url,
        "STYLESTUDIO_REDIS_PREFIX": f"sstest-sigterm-{free_port()}",
        "STYLESTUDIO_MIGRATE_ON_START": "false",
        "STYLESTUDIO_HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
        "NOTE_SERVICE_DELAY": "1.5",
    }
    log = (tmp_path / "note.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kit.note_service"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    # No key settings: the service accepts the development keys; the summary is operators' RPC.
    channel = open_channel(addr, Keyring.development().credentials("operator"))
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(200):
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "note.log").read_text())
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        call = asyncio.ensure_future(
            stub.GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest(user_id="in-flight"))
        )
        await asyncio.sleep(0.5)  # the handler is now sleeping inside the RPC
        proc.send_signal(signal.SIGTERM)
        response = await call
        assert response.action_counts["notes"] == 1
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        await channel.close()
        if proc.poll() is None:
            proc.kill()


async def test_a_second_server_cannot_take_a_port_already_in_use() -> None:
    # Without the option, gRPC's SO_REUSEPORT would let both listen and split the calls.
    first = grpc.aio.server(options=SERVER_OPTIONS)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    try:
        second = grpc.aio.server(options=SERVER_OPTIONS)
        try:
            second.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            pass
        else:
            raise AssertionError(f"a second server bound port {port}, which the first holds")
    finally:
        await first.stop(None)


async def test_a_service_waiting_for_its_database_is_alive_but_not_ready() -> None:
    """The probes' port answers from the start: liveness SERVING while PostgreSQL cannot be
    reached, readiness NOT_SERVING, so a pod started during a database outage waits for it
    instead of being restarted by its liveness probe."""
    nowhere = f"postgresql+psycopg://stylestudio_analytics@127.0.0.1:{free_port()}/stylestudio"
    health_addr = f"127.0.0.1:{free_port()}"
    settings = AnalyticsSettings(
        analytics_addr=f"127.0.0.1:{free_port()}",
        service_database_url=nowhere,
        health_addr=health_addr,
        migrate_on_start=False,
    )
    service = RunningService(definition(settings))
    starting = asyncio.create_task(service.start())
    try:
        async with grpc.aio.insecure_channel(health_addr) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await channel.channel_ready()
            liveness = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=5)
            readiness = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert liveness.status == health_pb2.HealthCheckResponse.SERVING
        assert readiness.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not starting.done(), "still waiting for PostgreSQL"
    finally:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await service.stop()
