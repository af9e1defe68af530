"""The kit's transport security: a service built from the kit served over mutual TLS, its
plaintext health-only port for probes, one-way TLS, and the settings it refuses at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kit.clients import open_channel
from kit.server import RunningService
from kit.settings import PlatformSettings
from kit.tls import TransportSecurity, TransportSecurityError, dial, listen
from services.analytics.settings import AnalyticsSettings
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.harness import TestDatabase, free_port, own_database
from tests.harness.identities import Keyring
from tests.harness.pki import CertificateAuthority, PlatformCertificates
from tests.kit.note_service import create_notes_table, definition


@pytest.fixture(scope="module")
def tls_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A database of its own: no other note service's relay publishes these tests' outbox."""
    with own_database(infrastructure, ["analytics"]) as database:
        yield database


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> PlatformCertificates:
    return PlatformCertificates(tmp_path_factory.mktemp("kit-pki"))


def _settings(
    tls_database: TestDatabase, redis_url: str, certificates: PlatformCertificates, **overrides: Any
) -> AnalyticsSettings:
    cert, key = certificates.files["analytics"]
    options: dict[str, Any] = {
        "analytics_addr": f"127.0.0.1:{free_port()}",
        "service_database_url": tls_database.service_urls["analytics"],
        "redis_url": redis_url,
        "redis_prefix": f"sstest-tls-{free_port()}",
        "migrate_on_start": False,
        "consumer_block_ms": 100,
        "health_check_interval_seconds": 0.2,
        "grpc_tls": True,
        "grpc_tls_cert_file": str(cert),
        "grpc_tls_key_file": str(key),
        "grpc_tls_ca_file": str(certificates.ca_file),
    }
    return AnalyticsSettings(**(options | overrides))


async def _started(settings: AnalyticsSettings) -> RunningService:
    await create_notes_table(settings.service_database_url or "")
    service = RunningService(definition(settings))
    await service.start()
    return service


@pytest.fixture(scope="module")
async def tls_service(
    tls_database: TestDatabase, redis_url: str, certificates: PlatformCertificates
) -> AsyncIterator[RunningService]:
    settings = _settings(tls_database, redis_url, certificates, health_addr=f"127.0.0.1:{free_port()}")
    service = await _started(settings)
    yield service
    await service.stop()


async def _serving(channel: grpc.aio.Channel) -> str:
    """The health status, once the service's first readiness check has had time to say SERVING."""
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(100):
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            break
        await asyncio.sleep(0.1)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_a_kit_service_serves_its_rpcs_and_health_over_mutual_tls(
    tls_service: RunningService, certificates: PlatformCertificates
) -> None:
    runtime = tls_service.runtime
    assert runtime is not None
    # The summary's declared caller; the service has no key settings, so development keys.
    operator = Keyring.development().credentials("operator")
    channel = open_channel(runtime.settings.analytics_addr, operator, 10.0, certificates.security("harness"))
    async with channel:
        assert await _serving(channel) == "SERVING"
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        reply = await stub.GetUserActivitySummary(
            analytics_pb2.GetUserActivitySummaryRequest(user_id="over-mtls")
        )
    assert reply.action_counts["notes"] == 1


async def test_the_health_only_port_answers_in_plaintext_and_serves_nothing_else(
    tls_service: RunningService,
) -> None:
    assert tls_service.health_port != 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_service.health_port}") as channel:
        assert await _serving(channel) == "SERVING"
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest(user_id="x"))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED

        async def list_services() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        with pytest.raises(grpc.aio.AioRpcError) as no_reflection:
            async for _ in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                list_services()
            ):
                pass
        assert no_reflection.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_service_port_refuses_plaintext_while_the_health_port_is_open(
    tls_service: RunningService,
) -> None:
    runtime = tls_service.runtime
    assert runtime is not None
    async with grpc.aio.insecure_channel(runtime.settings.analytics_addr) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_with_client_certificates_not_required_a_client_with_only_the_ca_gets_through(
    tls_database: TestDatabase, redis_url: str, certificates: PlatformCertificates
) -> None:
    settings = _settings(tls_database, redis_url, certificates, grpc_tls_require_client_cert=False)
    service = await _started(settings)
    try:
        credentials = grpc.ssl_channel_credentials(certificates.ca.pem)
        async with grpc.aio.secure_channel(settings.analytics_addr, credentials) as channel:
            assert await _serving(channel) == "SERVING"
        # Still TLS: the server's certificate is checked against the CA the client trusts.
        stranger = grpc.ssl_channel_credentials(CertificateAuthority("Another CA").pem)
        async with grpc.aio.secure_channel(settings.analytics_addr, stranger) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5.0)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await service.stop()


async def test_a_services_certificate_cannot_stand_in_for_another_service(
    certificates: PlatformCertificates,
) -> None:
    """A client checks that the server's certificate names the host it dialled: billing's key
    (leaked, say) cannot answer for users."""
    ca = certificates.ca
    billing = ca.issue("billing", hosts=())  # named for its own host only, as in a deployment
    client = certificates.security("gateway")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = listen(server, "127.0.0.1:0", TransportSecurity(billing.certificate, billing.key, ca.pem, True))
    await server.start()
    try:
        statuses = {}
        for name in ("billing", "users"):
            override = (("grpc.ssl_target_name_override", name),)
            async with dial(f"127.0.0.1:{port}", client, override) as channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=5.0
                    )
                    statuses[name] = "answered"
                except grpc.aio.AioRpcError as error:
                    statuses[name] = error.code().name
        assert statuses == {"billing": "answered", "users": "UNAVAILABLE"}
    finally:
        await server.stop(None)


# --- settings refused at start, each naming the variable to fix ----------------------------------


def _tls_settings(certificates: PlatformCertificates, **overrides: str) -> PlatformSettings:
    cert, key = certificates.files["billing"]
    files: dict[str, Any] = {
        "grpc_tls_cert_file": str(cert),
        "grpc_tls_key_file": str(key),
        "grpc_tls_ca_file": str(certificates.ca_file),
    }
    return PlatformSettings(grpc_tls=True, **(files | overrides))


def test_plaintext_is_the_default() -> None:
    assert TransportSecurity.from_settings(PlatformSettings()) is None


def test_complete_settings_load(certificates: PlatformCertificates) -> None:
    security = TransportSecurity.from_settings(_tls_settings(certificates))
    assert security is not None and security.require_client_cert
    assert "PRIVATE KEY" not in repr(security)


@pytest.mark.parametrize(
    ("setting", "variable"),
    [
        ("grpc_tls_cert_file", "STYLESTUDIO_GRPC_TLS_CERT_FILE"),
        ("grpc_tls_key_file", "STYLESTUDIO_GRPC_TLS_KEY_FILE"),
        ("grpc_tls_ca_file", "STYLESTUDIO_GRPC_TLS_CA_FILE"),
    ],
)
def test_a_missing_file_setting_is_refused(
    certificates: PlatformCertificates, tmp_path: Path, setting: str, variable: str
) -> None:
    with pytest.raises(TransportSecurityError, match=f"{variable} is required"):
        TransportSecurity.from_settings(_tls_settings(certificates, **{setting: ""}))
    with pytest.raises(TransportSecurityError, match=f"{variable}: cannot read"):
        TransportSecurity.from_settings(
            _tls_settings(certificates, **{setting: str(tmp_path / "absent.pem")})
        )


def test_a_key_that_does_not_belong_to_the_certificate_is_refused(certificates: PlatformCertificates) -> None:
    _, users_key = certificates.files["users"]
    with pytest.raises(
        TransportSecurityError, match="STYLESTUDIO_GRPC_TLS_KEY_FILE: the key does not belong"
    ):
        TransportSecurity.from_settings(_tls_settings(certificates, grpc_tls_key_file=str(users_key)))


def test_files_that_are_not_pem_are_refused_without_echoing_them(
    certificates: PlatformCertificates, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not-a-secret-but-not-pem-either")
    for setting, variable in [
        ("grpc_tls_cert_file", "STYLESTUDIO_GRPC_TLS_CERT_FILE"),
        ("grpc_tls_key_file", "STYLESTUDIO_GRPC_TLS_KEY_FILE"),
        ("grpc_tls_ca_file", "STYLESTUDIO_GRPC_TLS_CA_FILE"),
    ]:
        with pytest.raises(TransportSecurityError, match=variable) as refused:
            TransportSecurity.from_settings(_tls_settings(certificates, **{setting: str(garbage)}))
        assert "not-a-secret" not in str(refused.value)
