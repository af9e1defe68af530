"""The client address the gateway forwards: X-Forwarded-For believed only from trusted proxies,
and only up to the right-most hop that is not one of them (gateway/client_address.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pydantic
import pytest

from gateway.client_address import client_address, parse_networks
from gateway.settings import GatewaySettings
from tests.gateway.conftest import USER, EchoBuild, RunningGateway, gateway_settings, run_gateway
from tests.gateway.echo_service import SERVICE, EchoService

# The tests' HTTP client connects from 127.0.0.1: as a trusted proxy, or as a client.
TRUSTED = ["127.0.0.0/8", "10.0.0.0/8", "2001:db8:1::/48"]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        # A trusted proxy, nothing forwarded: the proxy is all there is to know.
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        # Whatever the client wrote before the proxy appended its peer is ignored.
        ("10.0.0.1", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),
        # Several trusted hops: the right-most untrusted one.
        ("10.0.0.1", ["6.6.6.6, 203.0.113.9, 10.9.9.9, 10.8.8.8"], "203.0.113.9"),
        # Only trusted hops: the furthest one.
        ("10.0.0.1", ["10.9.9.9, 10.8.8.8"], "10.9.9.9"),
        # Ports and brackets as some proxies write them; IPv4-mapped IPv6.
        ("10.0.0.1", ["203.0.113.9:51234"], "203.0.113.9"),
        ("10.0.0.1", ["[2001:db8:2::5]:443"], "2001:db8:2::5"),
        ("::ffff:10.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9"),
        ("2001:db8:1::1", ["2001:db8:2::5"], "2001:db8:2::5"),
        # Garbage ends the walk: the last address read stands, never the garbage.
        ("10.0.0.1", ["not-an-address"], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        ("10.0.0.1", ["203.0.113.9, unknown"], "10.0.0.1"),
        ("10.0.0.1", ["unknown, 203.0.113.9"], "203.0.113.9"),
        ("10.0.0.1", ["203.0.113.9,,10.9.9.9"], "10.9.9.9"),
        ("10.0.0.1", ["1.2.3.4.5, 999.1.1.1"], "10.0.0.1"),
        ("10.0.0.1", ["\u00e9\u00e9, 203.0.113.9\x00"], "10.0.0.1"),
        ("10.0.0.1", ["1" * 10_000], "10.0.0.1"),
        ("10.0.0.1", [", ".join(["10.1.1.1"] * 1000)], "10.1.1.1"),
        # Not an IP peer (a Unix socket): no address to forward.
        (None, ["203.0.113.9"], None),
    ],
)
def test_the_client_is_the_right_most_hop_that_is_not_a_trusted_proxy(
    peer: str | None, forwarded_for: list[str], expected: str | None
) -> None:
    assert client_address(peer, forwarded_for, parse_networks(TRUSTED)) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("10.0.0.1", ["203.0.113.9"], ()) == "10.0.0.1"


def test_settings_refuse_bad_networks_and_the_old_blanket_trust() -> None:
    with pytest.raises(pydantic.ValidationError, match="STYLESTUDIO_GATEWAY_TRUSTED_PROXIES"):
        GatewaySettings(gateway_trusted_proxies=["10.0.0.0/33"])
    with pytest.raises(pydantic.ValidationError, match="STYLESTUDIO_GATEWAY_TRUSTED_PROXIES"):
        GatewaySettings(gateway_trust_forwarded_for=True)
    assert GatewaySettings(gateway_trusted_proxies=["10.0.0.0/8", "192.0.2.7"]).gateway_trusted_proxies


@pytest.fixture(scope="module")
async def proxied_gateway(
    echo_build: EchoBuild, echo_server: tuple[EchoService, str]
) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(gateway_trusted_proxies=TRUSTED)
    running = await run_gateway(echo_build.descriptor_set, {SERVICE: echo_server[1]}, settings)
    yield running
    await running.close()


async def _forwarded(url: str, headers: list[tuple[str, str | bytes]]) -> str | None:
    async with httpx.AsyncClient(base_url=url) as client:
        raw = [
            (name.encode(), value if isinstance(value, bytes) else value.encode()) for name, value in headers
        ]
        response = await client.get(
            "/v1/whoami", headers=[(b"authorization", USER["Authorization"].encode()), *raw]
        )
    assert response.status_code == 200, response.text
    metadata = response.json()["metadata"]
    return metadata.get("x-forwarded-for")


async def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(echo_gateway: RunningGateway) -> None:
    assert await _forwarded(echo_gateway.url, [("X-Forwarded-For", "203.0.113.9")]) == "127.0.0.1"
    assert await _forwarded(echo_gateway.url, []) == "127.0.0.1"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], "127.0.0.1"),
        ([("X-Forwarded-For", "203.0.113.9")], "203.0.113.9"),
        ([("X-Forwarded-For", "6.6.6.6, 203.0.113.9")], "203.0.113.9"),
        ([("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2")], "203.0.113.9"),
        # Two header lines read as one list, in order.
        ([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9, 10.2.2.2")], "203.0.113.9"),
        ([("X-Forwarded-For", "203.0.113.9, <script>")], "127.0.0.1"),
        ([("X-Forwarded-For", b"\xff\xfe, 203.0.113.9")], "203.0.113.9"),
    ],
)
async def test_through_trusted_proxies_exactly_one_address_is_forwarded(
    proxied_gateway: RunningGateway, headers: list[tuple[str, str | bytes]], expected: str
) -> None:
    assert await _forwarded(proxied_gateway.url, headers) == expected
