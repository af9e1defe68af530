"""Who may read /metrics: a bearer token and/or client networks; never the public in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from tests.gateway.conftest import EchoBuild, gateway_settings, run_gateway
from tests.gateway.echo_service import SERVICE, EchoService

TOKEN = "metrics-token-for-the-test-0123456789"


@asynccontextmanager
async def gateway_with(
    echo_build: EchoBuild, echo_server: tuple[EchoService, str], **settings: object
) -> AsyncIterator[httpx.AsyncClient]:
    running = await run_gateway(
        echo_build.descriptor_set, {SERVICE: echo_server[1]}, gateway_settings(**settings)
    )
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=10.0) as client:
            yield client
    finally:
        await running.close()


def assert_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["reason"]) == (status, reason)
    assert "stylestudio_gateway_requests" not in response.text


async def test_production_without_a_setting_keeps_metrics_private(echo_build, echo_server) -> None:
    async with gateway_with(echo_build, echo_server, environment="production") as client:
        await client.get("/healthz")
        assert_refused(await client.get("/metrics"), 403, "FORBIDDEN")
        assert_refused(
            await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}), 403, "FORBIDDEN"
        )


async def test_development_without_a_setting_serves_metrics(echo_build, echo_server) -> None:
    async with gateway_with(echo_build, echo_server, environment="development") as client:
        assert (await client.get("/metrics")).status_code == 200


@pytest.mark.parametrize("environment", ["production", "development"])
async def test_a_bearer_token_guards_metrics(echo_build, echo_server, environment: str) -> None:
    async with gateway_with(
        echo_build, echo_server, environment=environment, metrics_bearer_token=TOKEN
    ) as client:
        assert_refused(await client.get("/metrics"), 401, "UNAUTHORIZED")
        assert_refused(
            await client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "UNAUTHORIZED"
        )
        served = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert served.status_code == 200 and "stylestudio_gateway_requests" in served.text


async def test_an_allow_list_of_networks_guards_metrics(echo_build, echo_server) -> None:
    async with gateway_with(
        echo_build, echo_server, environment="production", metrics_allow_networks=["10.0.0.0/8"]
    ) as client:
        assert_refused(await client.get("/metrics"), 403, "FORBIDDEN")  # the test connects from 127.0.0.1
    async with gateway_with(
        echo_build, echo_server, environment="production", metrics_allow_networks=["127.0.0.0/8", "::1/128"]
    ) as client:
        assert (await client.get("/metrics")).status_code == 200
        # Through a proxy the peer is the proxy: the allow-list cannot vouch for the client.
        for header in ({"X-Forwarded-For": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
            assert_refused(await client.get("/metrics", headers=header), 403, "FORBIDDEN")


async def test_token_and_networks_together_both_must_hold(echo_build, echo_server) -> None:
    async with gateway_with(
        echo_build,
        echo_server,
        environment="production",
        metrics_bearer_token=TOKEN,
        metrics_allow_networks=["127.0.0.0/8"],
    ) as client:
        assert_refused(await client.get("/metrics"), 401, "UNAUTHORIZED")
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
    async with gateway_with(
        echo_build,
        echo_server,
        environment="production",
        metrics_bearer_token=TOKEN,
        metrics_allow_networks=["10.0.0.0/8"],
    ) as client:
        refused = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert_refused(refused, 403, "FORBIDDEN")


def test_a_malformed_network_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="metrics_allow_networks"):
        gateway_settings(metrics_allow_networks=["10.0.0.300/8"])


def test_production_refuses_a_short_metrics_token_at_start_up() -> None:
    weak = gateway_settings(environment="production", metrics_bearer_token="short")
    assert any("STYLESTUDIO_METRICS_BEARER_TOKEN" in problem for problem in weak.insecurities())
    strong = gateway_settings(environment="production", metrics_bearer_token=TOKEN)
    assert not any("METRICS" in problem for problem in strong.insecurities())
