"""`make run` gives each service a metrics port and lists them. A service's metrics port follows
the gateway's rule (kit.metrics.MetricsAccess): a bearer token and/or client networks, never
public in production; a proxied request is not the scraper's own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import ip_network
from typing import Any

import httpx
import pytest

from kit.launcher import LaunchSettings, metrics_listing, platform_children
from kit.metrics import MetricsAccess, MetricsEndpoint
from kit.server import RunningService
from kit.settings import SERVICES
from services.analytics.__main__ import definition
from services.analytics.settings import AnalyticsSettings
from tests.harness.in_process import start_in_process

TOKEN = "metrics-token-for-the-service-test-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
async def guarded(infrastructure: object, redis_url: str) -> AsyncIterator[RunningService]:
    """The analytics service with a metrics port that wants the token, from loopback only."""
    service, database, _ = await start_in_process(
        "analytics",
        infrastructure,
        redis_url,
        AnalyticsSettings,
        definition,
        metrics_addr="127.0.0.1:0",
        metrics_bearer_token=TOKEN,
        metrics_allow_networks=["127.0.0.0/8"],
    )
    try:
        yield service
    finally:
        await service.stop()
        database.drop()


async def get(port: int, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{port}/metrics", headers=headers)


def assert_refused(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == status
    assert response.json()["error"]["reason"] == reason
    assert "rpc_server_duration_seconds" not in response.text


async def test_the_token_and_the_network_open_a_service_port(guarded: RunningService) -> None:
    port = guarded.metrics_port
    assert port > 0
    assert_refused(await get(port), 401, "UNAUTHORIZED")
    assert_refused(await get(port, Authorization="Bearer wrong"), 401, "UNAUTHORIZED")
    # Through a proxy, the peer is the proxy's address, whatever network it is in.
    assert_refused(await get(port, **BEARER, **{"X-Forwarded-For": "127.0.0.1"}), 403, "FORBIDDEN")
    allowed = await get(port, **BEARER)
    assert allowed.status_code == 200
    assert "stylestudio_event_loop_lag_seconds" in allowed.text


@pytest.mark.parametrize(
    ("access", "status", "reason"),
    [
        (MetricsAccess("", [ip_network("10.0.0.0/8")], production=False), 403, "FORBIDDEN"),
        (MetricsAccess("", [], production=True), 403, "FORBIDDEN"),
    ],
    ids=["another-network", "production-without-a-setting"],
)
async def test_a_service_port_refuses_who_the_rule_refuses(
    guarded: RunningService, access: MetricsAccess, status: int, reason: str
) -> None:
    assert guarded.runtime is not None
    endpoint = MetricsEndpoint(guarded.runtime.metrics, access, "127.0.0.1:0")
    endpoint.start()
    try:
        assert_refused(await get(endpoint.port, **BEARER), status, reason)
    finally:
        endpoint.stop()


def test_make_run_gives_each_service_a_metrics_port_and_lists_them() -> None:
    settings = LaunchSettings(billing_metrics_addr="127.0.0.1:19465", gateway_addr="127.0.0.1:18080")
    urls = {name: f"url-{name}" for name in SERVICES}
    infrastructure: Any = _Infra()
    children = platform_children(
        {}, infrastructure, urls, None, metrics_addresses=settings.metrics_addresses()
    )
    ports = {child.name: child.env.get("STYLESTUDIO_METRICS_ADDR") for child in children}
    assert ports["billing"] == "127.0.0.1:19465"
    assert len({ports[name] for name in SERVICES}) == len(SERVICES)
    assert ports["gateway"] is None  # its metrics are its own /metrics
    listing = metrics_listing(settings)
    assert [line.split()[2] for line in listing] == [*SERVICES, "gateway"]
    assert "http://127.0.0.1:19465/metrics" in listing[1]
    assert listing[-1].endswith("http://127.0.0.1:18080/metrics")


class _Infra:
    database_url = "postgresql+psycopg://postgres@127.0.0.1:5432/x"
    redis_url = "redis://127.0.0.1:6379/0"
