"""Overload through the gateway: a full generation queue refuses starts early (429, Retry-After)
without charging or writing anything, and a watch stream that stays quiet while its generation
waits keeps its connection (keepalive pings every 200 ms on every hop, issue 13). Every such
refusal of a start or a batch carries the caller's X-RateLimit-* (issue 15), the gateway's and
the service's own admission control included.

Two platforms of their own (the queue limit and keepalive interval are every process's
settings; a gateway and a generation service that take one call at a time): about 30 s.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.generation.settings import GenerationSettings
from stylestudio.generation.v1 import resources_pb2
from tests.generation.conftest import GENERATION_ENV, Shopper, png
from tests.generation.test_crash_safety import _resume
from tests.generation.test_start_races import _keys_now, _new_pause
from tests.harness import Platform, own_platform

QUEUE_LIMIT = 2
HOURLY_LIMITS = GenerationSettings.model_fields["hourly_generation_limits"].default
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
async def busy_platform(
    infrastructure: object, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    work_dir = tmp_path_factory.mktemp("admission")
    async with own_platform(infrastructure, redis_url, work_dir, extra_env=ADMISSION_ENV) as running:
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


def _limits(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["X-RateLimit-Limit"]),
        int(headers["X-RateLimit-Remaining"]),
        int(headers["X-RateLimit-Reset"]),
    )


async def _a_batch_refused_for_the_full_queue_says_its_limits_too(
    platform: Platform, rest: httpx.AsyncClient
) -> None:
    """Batches are refused whole for a full queue, before any item: with the pro hour's figures."""
    pro = Shopper(platform, plan="pro")
    await pro.grant(10)
    item = {
        "productImageFiles": [await pro.upload()],
        "prompt": "a scarf",
        "parameters": {"quality": "draft"},
    }
    auth = {"Authorization": f"Bearer {pro.token}"}
    refused = await rest.post("/v1/generations:batch", json={"requests": [item, item]}, headers=auth)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["details"]["scope"] == "queue"
    assert _limits(refused) == (HOURLY_LIMITS["pro"], HOURLY_LIMITS["pro"], 0)


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
        # Not the hourly limit's refusal, but it says where that stands: two of the hour's used.
        assert _limits(refused) == (HOURLY_LIMITS["free"], HOURLY_LIMITS["free"] - QUEUE_LIMIT, 0)
        await _a_batch_refused_for_the_full_queue_says_its_limits_too(busy_platform, rest)
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


# Saturated on purpose: one request at a time in the gateway, one call at a time in generation.
SATURATED_ENV = GENERATION_ENV | {
    "STYLESTUDIO_GATEWAY_MAX_IN_FLIGHT_REQUESTS": "1",
    # the start the test holds at a checkpoint is not swept meanwhile
    "STYLESTUDIO_START_ABANDONED_AFTER_SECONDS": "60",
}


@pytest.fixture(scope="module")
async def saturated_platform(
    infrastructure: object, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    async with own_platform(
        infrastructure,
        redis_url,
        tmp_path_factory.mktemp("saturated"),
        extra_env=SATURATED_ENV,
        process_env={"generation": {"STYLESTUDIO_MAX_IN_FLIGHT_RPCS": "1"}},
    ) as running:
        yield running


async def test_a_start_refused_by_a_saturated_gateway_or_service_carries_the_rate_limit_headers(
    saturated_platform: Platform,
) -> None:
    """The gateway leaves refusing starts and batches to the generation service, whose admission
    control refuses them with the caller's X-RateLimit-*; any other route it refuses itself."""
    shopper = Shopper(saturated_platform)
    await shopper.grant(10)
    product = await shopper.upload()  # straight to files: the gateway takes one request at a time
    auth = {"Authorization": f"Bearer {shopper.token}"}
    free = HOURLY_LIMITS["free"]

    def body(prompt: str) -> dict[str, object]:
        return {"productImageFiles": [product], "prompt": prompt, "parameters": {"quality": "draft"}}

    async with httpx.AsyncClient(base_url=saturated_platform.gateway_url, timeout=30.0) as rest:
        before = await _keys_now(saturated_platform, "after_hold")
        held = asyncio.ensure_future(
            rest.post("/v1/generations", json=body("a belt [pause:after_hold]"), headers=auth)
        )
        generation_id = await _new_pause(saturated_platform, "after_hold", before)
        # The gateway and generation are both full with the held start.
        other = await rest.get("/v1/billing/balance", headers=auth)
        assert other.status_code == 429, other.text
        assert other.json()["error"]["details"]["scope"] == "gateway"
        assert "X-RateLimit-Limit" not in other.headers
        for path, sent in (
            ("/v1/generations", body("a hat")),
            ("/v1/generations:batch", {"requests": [body("a hat")]}),
        ):
            refused = await rest.post(path, json=sent, headers=auth)
            assert refused.status_code == 429, refused.text
            error = refused.json()["error"]
            assert (error["reason"], error["details"]["scope"]) == ("RATE_LIMITED", "service"), error
            assert int(refused.headers["Retry-After"]) >= 1
            # The held start counted its slot before its hold; the refused ones counted nothing.
            assert _limits(refused) == (free, free - 1, 0), path

        await _resume(saturated_platform, generation_id, "after_hold")
        started = await held
        assert started.status_code == 200, started.text
        assert _limits(started) == (free, free - 1, 0)
        again = await rest.post("/v1/generations", json=body("a hat"), headers=auth)
        assert again.status_code == 200, again.text
        assert _limits(again) == (free, free - 2, 0)
