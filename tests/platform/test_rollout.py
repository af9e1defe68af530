"""A roll-out under load: each service in turn is replaced as Kubernetes' rolling update replaces
a pod (maxSurge 1, maxUnavailable 0): a new process is started, and once it is SERVING the old
one is stopped with SIGTERM, while clients keep sending reads and writes through the gateway.
A client retries only a 503 that carries Retry-After (at most three times, waiting what it says,
bounded); any other failure, a refused or reset connection included, fails the test. Each process
must stop by itself within its grace period (exit 0), and every generation started during the
roll-out must complete.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from kit.settings import SERVICES
from stylestudio.generation.v1 import resources_pb2
from tests.generation.conftest import GENERATION_ENV, Shopper
from tests.harness import Platform, TestDatabase, own_database

RETRIES = 3
LONGEST_WAIT = 2.0  # a Retry-After longer than this is waited this long
CLIENTS = 3
STARTUP_TIMEOUT = 180.0  # a loaded machine; nothing is timed


@pytest.fixture(scope="module")
def rollout_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="module")
async def replicated_platform(
    rollout_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """One process of each service running, a second address for each that the roll-out starts
    (the gateway's channels balance over both addresses and skip the one that is down)."""
    async with Platform(
        rollout_database,
        redis_url,
        tmp_path_factory.mktemp("rollout"),
        extra_env=GENERATION_ENV,
        replicas=dict.fromkeys(SERVICES, 2),
    ) as running:
        await running.start_and_wait(*SERVICES, "gateway", timeout=STARTUP_TIMEOUT)
        yield running


@dataclass
class Traffic:
    """What the clients sent, retried and saw go wrong, and which process was rolling then."""

    rolling: str = "-"
    sent: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)

    async def call(
        self, client: httpx.AsyncClient, method: str, path: str, **options: object
    ) -> httpx.Response:
        for attempt in range(RETRIES + 1):
            self.sent += 1
            try:
                response = await client.request(method, path, **options)  # type: ignore[arg-type]
            except httpx.TransportError as error:
                self.failures.append(f"{method} {path} during {self.rolling}: {type(error).__name__} {error}")
                raise
            retry_after = response.headers.get("retry-after")
            if response.status_code == 503 and retry_after is not None and attempt < RETRIES:
                self.retried += 1
                await asyncio.sleep(min(float(retry_after), LONGEST_WAIT))
                continue
            if response.is_success:
                return response
            self.failures.append(
                f"{method} {path} during {self.rolling}: {response.status_code} {response.text[:300]}"
            )
            raise AssertionError(self.failures[-1])
        raise AssertionError("unreachable")


async def _client_loop(
    traffic: Traffic, client: httpx.AsyncClient, product: str, stop: asyncio.Event, starts: int
) -> None:
    """Reads of every service, and now and then a generation (a write through three services)."""
    reads: list[tuple[str, str, dict[str, object]]] = [
        ("GET", "/v1/billing/balance", {}),
        ("GET", "/v1/files", {"params": {"pageSize": 5}}),
        ("POST", "/v1/billing/estimate", {"json": {"model": "stable-diffusion-xl", "numImages": 1}}),
        ("GET", "/v1/models", {}),
        ("GET", "/v1/analytics/metrics", {"params": {"window": "24h"}}),
        ("GET", "/.well-known/jwks.json", {}),
    ]
    round_ = 0
    while not stop.is_set():
        try:
            for method, path, options in reads:
                await traffic.call(client, method, path, **options)
            if round_ % 4 == 0 and starts > 0:
                starts -= 1
                body = {
                    "productImageFiles": [product],
                    "prompt": "a coat",
                    "parameters": {"quality": "draft"},
                }
                headers = {"Idempotency-Key": str(uuid.uuid4())}  # a retry starts nothing twice
                started = await traffic.call(client, "POST", "/v1/generations", json=body, headers=headers)
                traffic.generations.append(started.json()["id"])
        except (AssertionError, httpx.TransportError):
            return  # recorded; the test reports every failure at the end
        round_ += 1
        await asyncio.sleep(0.05)


async def _taking_calls(platform: Platform, process: str) -> None:
    """Until ``process`` has served a call of the platform's API: it is in the callers' rotation,
    as a pod is once in its Service's endpoints (the harness's callers dial a fixed list of
    addresses, and reconnect to one that was down only after their backoff)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while "rpc rpc=/stylestudio." not in platform.logs(process):
        assert time.monotonic() < deadline, f"{process} never took a call"
        await asyncio.sleep(0.2)


async def test_a_rolling_restart_of_every_service_under_load_fails_no_request(
    replicated_platform: Platform,
) -> None:
    platform = replicated_platform
    shopper = Shopper(platform, plan="enterprise")
    await shopper.grant(200)
    product = await shopper.upload()
    traffic, stop = Traffic(), asyncio.Event()
    headers = {"Authorization": f"Bearer {shopper.token}"}
    began = time.monotonic()
    async with platform.client(headers=headers, timeout=60.0) as client:
        clients = [
            asyncio.create_task(_client_loop(traffic, client, product, stop, starts=6))
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(1.0)  # traffic flowing before the first restart
        exits: dict[str, int] = {}
        for service in SERVICES:
            old, new = platform.instances(service)
            traffic.rolling = service
            await platform.start_and_wait(new, timeout=STARTUP_TIMEOUT)
            await _taking_calls(platform, new)
            exits[old] = await asyncio.to_thread(platform.stop, old)
        traffic.rolling = "-"
        await asyncio.sleep(1.0)  # and after the last one
        stop.set()
        await asyncio.gather(*clients)
    rolled = time.monotonic() - began

    assert traffic.failures == [], "\n".join(traffic.failures)
    assert exits == dict.fromkeys(SERVICES, 0), "each stopped by itself, within its grace period"
    assert traffic.sent > 100, traffic
    assert len(traffic.generations) == CLIENTS * 6
    for generation_id in traffic.generations:
        done = await shopper.wait_terminal(generation_id, timeout=60)
        assert done.status == resources_pb2.COMPLETED, (generation_id, done.error)
    print(f"roll-out: {rolled:.1f} s, {traffic.sent} requests, {traffic.retried} retried after a 503")
