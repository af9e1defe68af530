"""The foundation's promises about the running platform (every service as a real process)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy.engine import make_url

from tests.harness import SERVICES, Platform

EXPECTED_SERVICES = {
    "users": {"stylestudio.users.v1.AuthService", "stylestudio.users.v1.UsersService"},
    "billing": {"stylestudio.billing.v1.BillingService"},
    "files": {"stylestudio.files.v1.FilesService"},
    "generation": {"stylestudio.generation.v1.GenerationService"},
    "analytics": {"stylestudio.analytics.v1.AnalyticsService"},
}


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_reports_serving(platform: Platform, service: str) -> None:
    assert await platform.health(service) == "SERVING"


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_lists_its_api_through_reflection(platform: Platform, service: str) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(platform.channel(service))

    async def one_request() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [response async for response in stub.ServerReflectionInfo(one_request())]
    listed = {entry.name for entry in responses[0].list_services_response.service}
    assert EXPECTED_SERVICES[service] <= listed
    assert "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", ["billing", "generation"])
async def test_reflection_speaks_v1_as_well_as_v1alpha(platform: Platform, service: str) -> None:
    # grpc.reflection.v1 has v1alpha's messages under another package: the same bytes.
    info = platform.channel(service).stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    api = next(iter(EXPECTED_SERVICES[service]))

    async def requests() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=api)
        yield reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        )

    listed, of_api, of_reflection = [response async for response in info(requests())]
    names = {entry.name for entry in listed.list_services_response.service}
    assert {api, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for response in (of_api, of_reflection)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    services = {f"{file.package}.{entry.name}" for file in files for entry in file.service}
    assert {api, "grpc.reflection.v1.ServerReflection"} <= services


async def test_gateway_healthz_answers(gateway: object) -> None:
    response = await gateway.get("/healthz")  # type: ignore[attr-defined]
    assert response.status_code == 200


async def test_readyz_follows_a_service_going_down_and_coming_back(
    platform: Platform, gateway: object
) -> None:
    assert (await gateway.get("/readyz")).status_code == 200  # type: ignore[attr-defined]
    platform.stop("files")
    try:
        response = await gateway.get("/readyz")  # type: ignore[attr-defined]
        assert response.status_code == 503
        assert response.json()["services"]["files"] != "SERVING"
        assert response.json()["services"]["billing"] == "SERVING"
    finally:
        platform.start("files")
    await platform.wait_serving("files")
    # The gateway's channel finds the restarted service again within its reconnect backoff.
    deadline = asyncio.get_running_loop().time() + 15
    while (await gateway.get("/readyz")).status_code != 200:  # type: ignore[attr-defined]
        assert asyncio.get_running_loop().time() < deadline, "not ready again after the service came back"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_role_cannot_touch_another_services_schema(platform: Platform, service: str) -> None:
    own_dsn = make_url(platform.database.service_urls[service]).set(drivername="postgresql")
    with psycopg.connect(own_dsn.render_as_string(hide_password=False), autocommit=True) as connection:
        # Its own schema works...
        connection.execute(f"SELECT count(*) FROM {service}.outbox").fetchone()
        for other in SERVICES:
            if other == service:
                continue
            for statement in (
                f"SELECT count(*) FROM {other}.outbox",
                f"INSERT INTO {other}.inbox (consumer, event_id) VALUES ('intruder', 'x')",
                f"CREATE TABLE {other}.intruder (id int)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    connection.execute(statement)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/billing/purchases", {"packageName": "starter"}),
        ("/v1/users/me/api-keys", {"name": "ci"}),
        ("/v1/generations", {"productImageFiles": [], "prompt": "x"}),
    ],
)
async def test_every_service_refuses_an_overlong_idempotency_key_the_same_way(
    platform: Platform, gateway: object, path: str, body: dict[str, object]
) -> None:
    _, token = platform.user_token(plan="pro")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k" * 256}
    response = await gateway.post(path, json=body, headers=headers)  # type: ignore[attr-defined]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["reason"], error["details"]["field"]) == ("VALIDATION_ERROR", "Idempotency-Key")
