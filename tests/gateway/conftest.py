"""Fixtures of the gateway tests: the echo service and a gateway over it, both in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import httpx
import pytest
import uvicorn

from gateway.app import Gateway
from gateway.descriptors import ApiDescriptors
from gateway.settings import GatewaySettings
from kit import telemetry
from kit.service_keys import generate_signing_identity
from tests.gateway.echo_service import (
    ECHO_PROTO,
    SERVICE,
    TEST_PROTOS,
    EchoService,
    compile_protos,
    load_echo_module,
    start_server,
)
from tests.harness.platform import free_port

# Small limits, so the 413 tests need no large bodies.
TEST_MAX_BODY_BYTES = 64 * 1024
TEST_MAX_UPLOAD_BYTES = 12 * 1024 * 1024


@dataclass
class EchoBuild:
    descriptor_set: Path
    pb: ModuleType


@dataclass
class RunningGateway:
    gateway: Gateway
    url: str
    server: uvicorn.Server
    task: asyncio.Task[None]

    async def close(self) -> None:
        self.server.should_exit = True
        await self.task


GATEWAY_KEY = generate_signing_identity("gateway").private_pem()


def gateway_settings(**overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "max_body_bytes": TEST_MAX_BODY_BYTES,
        "max_upload_bytes": TEST_MAX_UPLOAD_BYTES,
        "upload_chunk_bytes": 64 * 1024,
        "cors_allow_origins": ["https://app.example"],
        "rpc_deadline_seconds": 5.0,
        "stream_deadline_seconds": 30.0,
        "sse_heartbeat_seconds": 0.1,
        # The gateway's own identity key, so tests that run it in production can (docs/security.md).
        "service_private_key": GATEWAY_KEY,
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


async def run_gateway(
    descriptor_set: Path, targets: Mapping[str, str], settings: GatewaySettings | None = None
) -> RunningGateway:
    """A gateway over ``descriptor_set`` served by uvicorn in this event loop, on a free port."""
    telemetry.setup_telemetry("gateway", settings or gateway_settings())
    gateway = Gateway(settings or gateway_settings(), ApiDescriptors.from_file(descriptor_set), targets)
    port = free_port()
    # As gateway/__main__.py: the gateway decides itself whom to believe about client addresses.
    config = uvicorn.Config(
        gateway, host="127.0.0.1", port=port, log_config=None, access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return RunningGateway(gateway, f"http://127.0.0.1:{port}", server, task)


@pytest.fixture(scope="session")
def echo_build(tmp_path_factory: pytest.TempPathFactory) -> EchoBuild:
    out = tmp_path_factory.mktemp("echo_protos")
    descriptor_set = compile_protos(TEST_PROTOS, [ECHO_PROTO], out)
    return EchoBuild(descriptor_set, load_echo_module(out))


@pytest.fixture(scope="session")
async def echo_server(echo_build: EchoBuild) -> AsyncIterator[tuple[EchoService, str]]:
    service = EchoService(echo_build.pb)
    server, target = await start_server(service.generic_handler())
    yield service, target
    await server.stop(0)


@pytest.fixture(scope="session")
async def echo_gateway(
    echo_build: EchoBuild, echo_server: tuple[EchoService, str]
) -> AsyncIterator[RunningGateway]:
    running = await run_gateway(echo_build.descriptor_set, {SERVICE: echo_server[1]})
    yield running
    await running.close()


@pytest.fixture
async def echo(echo_gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=echo_gateway.url, timeout=30.0) as client:
        yield client


USER = {"Authorization": "Bearer test-token"}


def grpc_code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name]
