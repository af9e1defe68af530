"""The gateway's admission control: past its cap of API requests in flight it answers at once
with 429 RATE_LIMITED and Retry-After, while its own probes still answer. About 1 s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.conftest import EchoBuild, RunningGateway, gateway_settings, run_gateway
from tests.gateway.echo_service import SERVICE, EchoService

SLOW = {"code": "OK", "delayMs": 800}


@pytest.fixture
async def small_gateway(
    echo_build: EchoBuild, echo_server: tuple[EchoService, str]
) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(gateway_max_in_flight_requests=2, gateway_busy_retry_after_seconds=2)
    running = await run_gateway(echo_build.descriptor_set, {SERVICE: echo_server[1]}, settings)
    yield running
    await running.close()


async def test_past_the_cap_requests_are_refused_at_once_with_retry_after(
    small_gateway: RunningGateway,
) -> None:
    async with httpx.AsyncClient(base_url=small_gateway.url, timeout=10.0) as client:
        slow = [asyncio.ensure_future(client.post("/v1/fail", json=SLOW)) for _ in range(10)]
        await asyncio.sleep(0.3)
        assert small_gateway.gateway.in_flight == 2
        assert (await client.get("/healthz")).status_code == 200
        watch = await client.get("/v1/count/2:watch")  # a stream is refused too while saturated
        assert watch.status_code == 429
        answers = await asyncio.gather(*slow)
        assert sorted(a.status_code for a in answers) == [200] * 2 + [429] * 8
        for refused in (a for a in answers if a.status_code == 429):
            assert refused.headers["Retry-After"] == "2"
            error = refused.json()["error"]
            assert (error["reason"], error["details"]["scope"]) == ("RATE_LIMITED", "gateway")
        assert small_gateway.gateway.in_flight == 0
        assert (await client.post("/v1/fail", json=SLOW)).status_code == 200
        # A stream holds no place while it streams: two watches and two calls run side by side.
        watches = [
            asyncio.ensure_future(client.get("/v1/count/3:watch", params={"delayMs": 300})) for _ in range(2)
        ]
        await asyncio.sleep(0.2)  # both streaming
        calls = [client.post("/v1/fail", json=SLOW) for _ in range(2)]
        answers = await asyncio.gather(*calls, *watches)
        assert [a.status_code for a in answers] == [200] * 4
