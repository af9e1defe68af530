"""Overload through the gateway: a full generation queue refuses starts early (429, Retry-After)
without charging or writing anything, and a watch stream that stays quiet while its generation
waits keeps its connection (keepalive pings every 200 ms on every hop, issue 13).

A platform of its own (the queue limit and keepalive interval are every process's settings):
about 25 s with its start.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from stylestudio.generation.v1 import resources_pb2
from tests.generation.conftest import GENERATION_ENV, Shopper, png
from tests.harness import Platform, TestDatabase, own_database

QUEUE_LIMIT = 2
QUEUED_SECONDS = 6  # how long a worker leaves each generation QUEUED: its watch is quiet meanwhile
ADMISSION_ENV = GENERATION_ENV | {
    "STYLESTUDIO_MAX_QUEUED_GENERATIONS": str(QUEUE_LIMIT),
    "STYLESTUDIO_QUEUE_DEPTH_REFRESH_SECONDS": "0",
    "STYLESTUDIO_QUEUE_FULL_RETRY_AFTER_SECONDS": "3",
    # Scaled down from 30 s for every client and server: gRPC then pings a connection with a
    # call open about once a second, which gRPC's default server policy answered with GOAWAY
    # "too_many_pings" at the third ping (tests/kit/test_keepalive.py).
    "STYLESTUDIO_GRPC_KEEPALIVE_MS": "200",
}


@pytest.fixture(scope="module")
def admission_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="module")
async def busy_platform(
    admission_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    running = Platform(
        admission_database, redis_url, tmp_path_factory.mktemp("admission"), extra_env=ADMISSION_ENV
    )
    async with running:
        await running.start_all()
        yield running


async def _watch(rest: httpx.AsyncClient, generation_id: str, auth: dict[str, str]) -> list[str]:
    """The statuses an SSE watch reports, failing on an error event (a dropped gRPC stream)."""
    statuses = []
    async with rest.stream("GET", f"/v1/generations/{generation_id}:watch", headers=auth) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            assert not line.startswith("event: error"), line
            if line.startswith("data:"):
                statuses.append(json.loads(line[5:])["status"])
    return statuses


async def test_a_full_queue_refuses_starts_early_charging_nothing_and_quiet_watches_stay_connected(
    busy_platform: Platform,
) -> None:
    shopper = Shopper(busy_platform)
    await shopper.grant(10)
    auth = {"Authorization": f"Bearer {shopper.token}"}
    async with httpx.AsyncClient(base_url=busy_platform.gateway_url, timeout=30.0) as rest:
        uploaded = await rest.post(
            "/v1/files",
            headers=auth,
            data={"category": "product_image"},
            files={"file": ("dress.png", png("blue"), "image/png")},
        )
        assert uploaded.status_code == 200, uploaded.text

        def body(prompt: str) -> dict[str, object]:
            return {
                "productImageFiles": [uploaded.json()["id"]],
                "prompt": prompt,
                "parameters": {"quality": "draft"},
            }

        waiting = []
        for index in range(QUEUE_LIMIT):
            posted = await rest.post(
                "/v1/generations", json=body(f"look {index} [queued:{QUEUED_SECONDS}]"), headers=auth
            )
            assert posted.status_code == 200, posted.text
            waiting.append(posted.json()["id"])
        watches = [asyncio.ensure_future(_watch(rest, generation_id, auth)) for generation_id in waiting]
        before = (await rest.get("/v1/billing/balance", headers=auth)).json()

        key = {"Idempotency-Key": f"refused-{uuid.uuid4().hex[:8]}"}
        refused = await rest.post("/v1/generations", json=body("one too many"), headers=auth | key)
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "3"
        error = refused.json()["error"]
        assert error["reason"] == "RATE_LIMITED" and error["details"]["scope"] == "queue"
        # Refused before anything happened: no hold, no charge, no generation, no hourly slot.
        assert (await rest.get("/v1/billing/balance", headers=auth)).json() == before
        listed = (await rest.get("/v1/generations", headers=auth)).json()["generations"]
        assert sorted(g["id"] for g in listed) == sorted(waiting)

        # The watches stayed quiet for QUEUED_SECONDS, pinged all along, and saw the end.
        for statuses in await asyncio.gather(*watches):
            assert statuses[0] == "QUEUED" and statuses[-1] == "COMPLETED", statuses

        # Drained: the same request with the same key now starts once, and is charged once.
        retried = await rest.post("/v1/generations", json=body("one too many"), headers=auth | key)
        assert retried.status_code == 200, retried.text
        again = await rest.post("/v1/generations", json=body("one too many"), headers=auth | key)
        assert again.json()["id"] == retried.json()["id"]
        done = await shopper.wait_terminal(retried.json()["id"])
        assert done.status == resources_pb2.COMPLETED
        balance = (await rest.get("/v1/billing/balance", headers=auth)).json()
        assert int(balance["balance"]) == 10 - 3 * int(retried.json()["tokenCost"])
    # Every hop kept its connection: no GOAWAY anywhere.
    for process in ("gateway", "generation", "billing", "files"):
        assert "too_many_pings" not in busy_platform.logs(process), process
