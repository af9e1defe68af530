"""Two services and the gateway over mutual TLS, with a CA and certificates made by the test:
HTTPS to the gateway, mTLS from the gateway to the services and between them; a peer without a
certificate of the platform's CA is refused before any RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from kit.tls import TransportSecurityError
from tests.harness import Platform, TestDatabase, own_database
from tests.harness.pki import CertificateAuthority, PlatformCertificates
from tests.harness.rest import sign_up

SERVICES_UNDER_TEST = ("users", "billing")


@pytest.fixture(scope="module")
def tls_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure, SERVICES_UNDER_TEST) as database:
        yield database


@pytest.fixture(scope="module")
async def tls_platform(
    tls_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    work_dir = tmp_path_factory.mktemp("tls-platform")
    certificates = PlatformCertificates(work_dir / "pki")
    async with Platform(tls_database, redis_url, work_dir, tls=certificates) as running:
        # The harness's health checks, over mutual TLS, then the gateway's /readyz over HTTPS.
        await running.start_and_wait(*SERVICES_UNDER_TEST, "gateway")
        yield running


@pytest.fixture
async def https(tls_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway that trusts the test CA and nothing else."""
    async with tls_platform.client() as client:
        yield client


async def test_a_call_through_the_gateway_crosses_both_services_over_mutual_tls(
    tls_platform: Platform, https: httpx.AsyncClient
) -> None:
    assert tls_platform.gateway_url.startswith("https://")
    bearer = {"Authorization": f"Bearer {(await sign_up(https))['accessToken']}"}
    # gateway -> billing, and billing -> users for the keys that verify the access token: both hops
    # are mutual TLS (the services listen on nothing else), so a 200 means both handshakes held.
    balance = await https.get("/v1/billing/balance", headers=bearer)
    assert balance.status_code == 200, balance.text


async def test_the_gateways_readiness_checks_reach_the_services_over_tls(https: httpx.AsyncClient) -> None:
    statuses = (await https.get("/readyz")).json()["services"]
    assert {service: statuses[service] for service in SERVICES_UNDER_TEST} == {
        "users": "SERVING",
        "billing": "SERVING",
    }
    assert statuses["files"] == "UNREACHABLE"  # not started: the check does not make things up


async def test_the_gateway_speaks_only_https(tls_platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=f"http://{tls_platform.gateway_addr}", timeout=5.0) as plain:
        with pytest.raises(httpx.TransportError):
            await plain.get("/healthz")


async def test_an_https_client_that_does_not_trust_the_platform_ca_is_refused(tls_platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=tls_platform.gateway_url, timeout=5.0) as public_roots_only:
        with pytest.raises(httpx.ConnectError):
            await public_roots_only.get("/healthz")


async def _health(channel: grpc.aio.Channel) -> str:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@pytest.mark.parametrize("service", SERVICES_UNDER_TEST)
async def test_a_client_with_a_certificate_of_the_platform_ca_gets_through(
    tls_platform: Platform, service: str
) -> None:
    assert tls_platform.tls is not None
    ca = tls_platform.tls.ca.pem
    issued = tls_platform.tls.ca.issue("a-new-client")
    credentials = grpc.ssl_channel_credentials(ca, issued.key, issued.certificate)
    async with grpc.aio.secure_channel(tls_platform.addresses[service], credentials) as channel:
        assert await _health(channel) == "SERVING"


def _refused_clients(platform: Platform) -> dict[str, grpc.aio.Channel]:
    assert platform.tls is not None
    ca = platform.tls.ca.pem
    # Same common name and addresses as the gateway's certificate, signed by another CA.
    impostor = CertificateAuthority("Another CA").issue("gateway")
    return {
        "plaintext": grpc.aio.insecure_channel(platform.addresses["users"]),
        "tls without a client certificate": grpc.aio.secure_channel(
            platform.addresses["users"], grpc.ssl_channel_credentials(ca)
        ),
        "a client certificate from another CA": grpc.aio.secure_channel(
            platform.addresses["users"],
            grpc.ssl_channel_credentials(ca, impostor.key, impostor.certificate),
        ),
    }


@pytest.mark.parametrize(
    "client", ["plaintext", "tls without a client certificate", "a client certificate from another CA"]
)
async def test_a_grpc_client_without_a_certificate_of_the_platform_ca_is_refused(
    tls_platform: Platform, client: str
) -> None:
    channels = _refused_clients(tls_platform)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _health(channels[client])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for channel in channels.values():
            await channel.close()


def test_the_gateway_refuses_half_an_https_configuration(tmp_path: Path) -> None:
    with pytest.raises(
        ValidationError, match="STYLESTUDIO_GATEWAY_TLS_CERT_FILE and STYLESTUDIO_GATEWAY_TLS_KEY"
    ):
        GatewaySettings(gateway_tls_cert_file=str(tmp_path / "gateway.pem"))


def test_the_gateway_refuses_to_start_with_grpc_tls_and_no_certificate() -> None:
    with pytest.raises(TransportSecurityError, match="STYLESTUDIO_GRPC_TLS_CERT_FILE is required"):
        Gateway(GatewaySettings(grpc_tls=True))
