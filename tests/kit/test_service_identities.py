"""Service keys and declared callers: production refuses forgeable keys, a key is rotated without a
refused call, and a wrong declaration in the protos stops a service from starting."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from pydantic import SecretStr

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from kit.access import method_access
from kit.auth import ServiceCredentials
from kit.service_keys import (
    IDENTITIES,
    PRIVATE_KEY_VARIABLE,
    PUBLIC_KEYS_VARIABLE,
    SigningIdentity,
    development_key,
    generate_signing_identity,
    public_keys_json,
)
from kit.settings import SERVICES, InsecureSettings, PlatformSettings
from services.analytics.__main__ import definition
from services.analytics.settings import AnalyticsSettings
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from stylestudio.common.v1 import access_pb2
from tests.harness.identities import declared_access
from tests.harness.in_process import start_in_process


def _settings(environment: str = "production", **values: Any) -> PlatformSettings:
    return PlatformSettings(environment=environment, **values)  # type: ignore[arg-type]


def _key_settings(own: SigningIdentity, accepted: dict[str, Sequence[SigningIdentity]]) -> dict[str, Any]:
    keys = {identity: [key.public_key for key in listed] for identity, listed in accepted.items()}
    return {
        "service_private_key": SecretStr(own.private_pem()),
        "service_public_keys": public_keys_json(keys),
    }


def test_production_refuses_missing_service_keys_naming_the_variables() -> None:
    with pytest.raises(InsecureSettings) as refused:
        ServiceCredentials.from_settings(_settings(), "billing")
    assert PRIVATE_KEY_VARIABLE in str(refused.value) and PUBLIC_KEYS_VARIABLE in str(refused.value)


def test_production_refuses_development_keys() -> None:
    billing = generate_signing_identity("billing")
    with pytest.raises(InsecureSettings, match=PRIVATE_KEY_VARIABLE):
        ServiceCredentials.from_settings(
            _settings(**_key_settings(development_key("billing"), {"billing": [development_key("billing")]})),
            "billing",
        )
    accepts_a_development_key = _key_settings(
        billing, {"billing": [billing], "files": [development_key("files")]}
    )
    with pytest.raises(InsecureSettings, match=PUBLIC_KEYS_VARIABLE):
        ServiceCredentials.from_settings(_settings(**accepts_a_development_key), "billing")


def test_the_gateway_refuses_to_start_in_production_without_its_own_key() -> None:
    with pytest.raises(InsecureSettings, match=PRIVATE_KEY_VARIABLE):
        Gateway(GatewaySettings(environment="production"))
    with pytest.raises(InsecureSettings, match=PRIVATE_KEY_VARIABLE):
        key = development_key("gateway").private_pem()
        Gateway(GatewaySettings(environment="production", service_private_key=SecretStr(key)))


def test_production_starts_with_keys_of_its_own_given_as_text_or_files(tmp_path: Path) -> None:
    billing, files = generate_signing_identity("billing"), generate_signing_identity("files")
    values = _key_settings(billing, {"billing": [billing], "files": [files]})
    one_line = billing.private_pem().strip().replace("\n", "\\n")  # as a one-line .env value
    credentials = ServiceCredentials.from_settings(
        _settings(**(values | {"service_private_key": SecretStr(one_line)})), "billing"
    )
    (tmp_path / "billing.pem").write_text(billing.private_pem())
    (tmp_path / "public.json").write_text(str(values["service_public_keys"]))
    from_files = ServiceCredentials.from_settings(
        _settings(
            service_private_key=SecretStr(str(tmp_path / "billing.pem")),
            service_public_keys=str(tmp_path / "public.json"),
        ),
        "billing",
    )
    principal = from_files.verify(ServiceCredentials(files).token())
    assert principal is not None and principal.identity == "files"
    assert credentials.verify(credentials.token("user-1")) == from_files.verify(credentials.token("user-1"))


def test_a_key_listed_under_another_identity_is_refused_at_start() -> None:
    billing = generate_signing_identity("billing")
    misfiled = _key_settings(billing, {"files": [billing]})  # billing's key given to the files process
    with pytest.raises(ValueError, match="does not list"):
        ServiceCredentials.from_settings(_settings("development", **misfiled), "billing")


def test_development_needs_no_configuration() -> None:
    credentials = ServiceCredentials.from_settings(_settings("development"), "generation")
    for identity in IDENTITIES:
        principal = credentials.verify(ServiceCredentials(development_key(identity)).token())
        assert principal is not None and principal.identity == identity


async def test_one_identitys_key_is_rotated_without_a_refused_call(
    infrastructure: object, redis_url: str
) -> None:
    """docs/security.md's steps for the operator identity: both keys accepted during the window
    (every verifier restarted with both), the old one refused once it is removed."""
    analytics = generate_signing_identity("analytics")
    old, new = generate_signing_identity("operator"), generate_signing_identity("operator")
    request = analytics_pb2.GetUserActivitySummaryRequest(user_id="rotated")

    async def answers(accepted: list[SigningIdentity]) -> dict[str, grpc.StatusCode]:
        keys = _key_settings(analytics, {"analytics": [analytics], "operator": accepted})
        service, database, _ = await start_in_process(
            "analytics", infrastructure, redis_url, AnalyticsSettings, definition, **keys
        )
        codes = {}
        try:
            async with grpc.aio.insecure_channel(service.definition.settings.listen_addr) as channel:
                stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
                for name, key in (("old", old), ("new", new)):
                    try:
                        await stub.GetUserActivitySummary(
                            request, metadata=ServiceCredentials(key).metadata()
                        )
                        codes[name] = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as error:
                        codes[name] = error.code()
        finally:
            await service.stop()
            database.drop()
        return codes

    assert await answers([old, new]) == {"old": grpc.StatusCode.OK, "new": grpc.StatusCode.OK}
    assert await answers([new]) == {"old": grpc.StatusCode.UNAUTHENTICATED, "new": grpc.StatusCode.OK}


def _service(method_options: dict[str, tuple[int, list[str], list[str]]]) -> object:
    """A service descriptor whose methods carry the given (access, callers, on_behalf_callers)."""
    pool = descriptor_pool.DescriptorPool()
    for known in (descriptor_pb2.DESCRIPTOR, access_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        known.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="declared.proto", package="declared", dependency=["stylestudio/common/v1/access.proto"]
    )
    file.message_type.add(name="Empty")
    service = file.service.add(name="Declared")
    for name, (level, callers, on_behalf) in method_options.items():
        method = service.method.add(name=name, input_type=".declared.Empty", output_type=".declared.Empty")
        method.options.Extensions[access_pb2.access] = level
        method.options.Extensions[access_pb2.callers].extend(callers)
        method.options.Extensions[access_pb2.on_behalf_callers].extend(on_behalf)
    pool.Add(file)
    return pool.FindServiceByName("declared.Declared")


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ((access_pb2.ACCESS_UNSPECIFIED, [], []), "declares no"),
        ((access_pb2.ACCESS_INTERNAL, [], []), "names no"),
        ((access_pb2.ACCESS_INTERNAL, ["generaton"], []), "unknown identities"),
        ((access_pb2.ACCESS_USER, ["generation"], []), "only INTERNAL RPCs name callers"),
        ((access_pb2.ACCESS_ADMIN, [], ["operator"]), "only USER RPCs"),
    ],
)
def test_a_wrong_declaration_stops_the_service_from_starting(
    options: tuple[int, list[str], list[str]], complaint: str
) -> None:
    fine: tuple[int, list[str], list[str]] = (access_pb2.ACCESS_INTERNAL, ["generation"], [])
    assert method_access([_service({"Fine": fine})])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=complaint):
        method_access([_service({"Fine": fine, "Wrong": options})])  # type: ignore[list-item]


def test_the_kits_own_internal_calls_are_declared() -> None:
    """The calls the kit makes for every service: API keys resolved by users (kit.tokens), and the
    credential state behind every token check and the standing of a user a service is called for
    (kit.credential_state, kit.access): each such service is a declared caller."""
    declared = declared_access()
    hosts_on_behalf = {m.split("/")[1].split(".")[1] for m, a in declared.items() if a.on_behalf_callers}
    states = declared["/stylestudio.users.v1.AuthService/GetCredentialState"].callers
    assert hosts_on_behalf - {"users"} <= states
    api_keys = declared["/stylestudio.users.v1.AuthService/AuthenticateApiKey"].callers
    assert api_keys == set(SERVICES) - {"users"}
