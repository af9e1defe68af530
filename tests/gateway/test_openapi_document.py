"""The OpenAPI document of Style Studio's own contract, read as the integrator who generates a
client from it would (tests/clients/test_generated_client.py generates one and runs it).

Built from the descriptor set the gateway serves, with no process running: names and
summaries for people, request bodies and required fields as the services enforce them,
the headers clients send and receive, and the media types of what is not JSON.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from gateway.api import Api, CallKind
from gateway.descriptors import ApiDescriptors
from gateway.openapi import build_openapi
from gateway.settings import GatewaySettings

OPERATION_ID = re.compile(r"[a-z][a-zA-Z]*\.[a-z][a-zA-Z]*")
VERBS = ("get", "post", "patch", "delete", "put")
SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.fixture(scope="module")
def api() -> Api:
    return Api(ApiDescriptors.from_file(GatewaySettings().descriptor_set))


@pytest.fixture(scope="module")
def document(api: Api) -> dict[str, Any]:
    built = build_openapi(api, "Style Studio API", "v1", dashboard=True, admin_traces=True)
    validate(built)
    return built


def operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{verb.upper()} {path}", operation)
        for path, item in document["paths"].items()
        for verb, operation in item.items()
        if verb in VERBS
    ]


def test_every_route_of_the_contract_declares_its_name_and_summary_for_http(api: Api) -> None:
    for route in api.routes:
        declared = route.method.openapi
        assert declared is not None, f"{route.method.full_name}: add option (stylestudio.common.v1.openapi)"
        assert OPERATION_ID.fullmatch(declared.operation_id), declared.operation_id
        summary = declared.summary
        assert summary and len(summary) <= 80 and summary[0].isupper() and not summary.endswith("."), summary


def test_operations_have_unique_aip_style_ids_grouped_by_collection(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for name, operation in operations(document):
        assert OPERATION_ID.fullmatch(operation["operationId"]), name
        assert operation["tags"] == [operation["operationId"].split(".")[0]], name
        assert operation["summary"] and "RPC" not in operation["summary"], name
        if operation["tags"] != ["webhooks"]:  # those are for Stripe and Replicate, and operators
            description = operation.get("description", "")
            assert "message" not in description and "gRPC" not in description, (name, description)
    by_route = {name: operation["operationId"] for name, operation in operations(document)}
    assert by_route["POST /v1/files"] == "files.upload"
    assert by_route["GET /v1/billing/balance"] == "billing.getBalance"
    assert by_route["GET /v1/generations/{id}:watch"] == "generations.watch"


def test_schemas_are_named_without_their_package(document: dict[str, Any]) -> None:
    names = set(document["components"]["schemas"])
    assert all("." not in name for name in names), sorted(n for n in names if "." in n)
    assert {
        "GetBalanceResponse",
        "Generation",
        "File",
        "Error",
        "ErrorInfo",
        "Empty",
        "Dashboard",
        "Readiness",
    } <= names
    # Two packages' "Error": the gateway's error body keeps the name, the proto's gets its domain.
    assert "CommonError" in names


def test_json_request_bodies_are_required_and_name_their_required_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, operation in operations(document):
        body = operation.get("requestBody")
        if body is None or "application/json" not in body["content"]:
            continue
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] or schema == {"type": "object"}, name  # {}: only the path's fields
    signup = schemas["SignupRequest"]
    assert set(signup["required"]) == {"email", "password", "name"}
    create = schemas["CreateGenerationRequest"]
    assert set(create["required"]) == {"productImageFiles", "prompt"}
    # A body that leaves out the field the path binds: no `userId` to fill in twice.
    grant = document["paths"]["/v1/admin/users/{user_id}/tokens:grant"]["post"]["requestBody"]
    assert "userId" not in grant["content"]["application/json"]["schema"]["properties"]


def test_the_upload_form_requires_its_category_and_file(document: dict[str, Any]) -> None:
    form = document["paths"]["/v1/files"]["post"]["requestBody"]
    assert form["required"] is True
    schema = form["content"]["multipart/form-data"]["schema"]
    assert set(schema["required"]) == {"category", "file"}  # filename comes from the file part
    assert schema["properties"]["file"] == {"type": "string", "format": "binary"}


def rpcs_reading_the_idempotency_key() -> set[str]:
    """The RPC handlers (services/*/api.py) that read the key: ``idempotency_key(context)``."""
    names = set()
    for path in SERVICES.glob("*/api.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef) and any(
                isinstance(call, ast.Call) and getattr(call.func, "id", "") == "idempotency_key"
                for call in ast.walk(node)
            ):
                names.add(node.name)
    return names


def test_idempotency_key_is_a_header_parameter_where_the_service_honours_it(document: dict[str, Any]) -> None:
    parameter = document["components"]["parameters"]["IdempotencyKey"]
    assert (parameter["name"], parameter["in"]) == ("Idempotency-Key", "header")
    taking = {
        operation["x-grpc-method"].rsplit(".", 1)[-1]
        for _, operation in operations(document)
        if {"$ref": "#/components/parameters/IdempotencyKey"} in operation.get("parameters", [])
    }
    honouring = rpcs_reading_the_idempotency_key()
    assert taking == honouring
    assert {"UploadFile", "CreateGeneration", "CreatePurchase", "CreateApiKey"} <= honouring


def test_responses_describe_their_headers(document: dict[str, Any]) -> None:
    components = document["components"]
    assert set(components["headers"]) >= {
        "X-Request-Id", "X-Trace-Id", "Retry-After", "ETag", "WWW-Authenticate",
        "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset",
    }  # fmt: skip
    for name, operation in operations(document):
        responses = operation["responses"]
        assert {"X-Request-Id", "X-Trace-Id"} <= set(responses["200"]["headers"]), name
        if operation["security"]:
            assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}, name
        assert "503" in responses or name == "GET /healthz", name  # busy, or a dependency down
    assert "WWW-Authenticate" in components["responses"]["Unauthorized"]["headers"]
    assert "Retry-After" in components["responses"]["TooManyRequests"]["headers"]
    limited = {
        name
        for name, operation in operations(document)
        if "X-RateLimit-Limit" in operation["responses"]["200"]["headers"]
    }
    assert limited == {"POST /v1/generations", "POST /v1/generations:batch"}  # the rate_limit_headers option
    create = document["paths"]["/v1/generations"]["post"]["responses"]
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
        create["200"]["headers"]
    )
    assert create["429"] == {"$ref": "#/components/responses/RateLimited"}
    assert "X-RateLimit-Reset" in components["responses"]["RateLimited"]["headers"]
    models = document["paths"]["/v1/models"]["get"]
    assert {"ETag", "Cache-Control"} <= set(models["responses"]["200"]["headers"])
    assert models["responses"]["304"] == {"$ref": "#/components/responses/NotModified"}
    assert {"$ref": "#/components/parameters/IfNoneMatch"} in models["parameters"]
    assert document["servers"] == [{"url": "/", "description": "The gateway that served this document"}]


def test_downloads_declare_their_media_types_and_the_watch_its_event_stream(
    api: Api, document: dict[str, Any]
) -> None:
    for path in ("/v1/files/{id}/content", "/v1/files/{id}/content:signed"):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert list(content) == ["image/jpeg", "image/png", "image/webp", "application/octet-stream"], path
    downloads = [route for route in api.routes if route.kind is CallKind.DOWNLOAD]
    assert downloads and all("*/*" not in route.media_types for route in downloads)
    watch = document["paths"]["/v1/generations/{id}:watch"]["get"]["responses"]["200"]
    stream = watch["content"]["text/event-stream"]
    assert stream["schema"]["type"] == "string"
    assert stream["x-event-schemas"]["message"] == {"$ref": "#/components/schemas/Generation"}
    assert "`data: <Generation>`" in watch["description"]


async def test_a_401_carries_the_bearer_challenge(echo: httpx.AsyncClient) -> None:
    missing = await echo.post("/v1/things", json={"name": "x"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="stylestudio"'
    malformed = await echo.post("/v1/things", json={"name": "x"}, headers={"Authorization": "Basic eDp5"})
    assert malformed.status_code == 401
    assert malformed.headers["www-authenticate"] == 'Bearer realm="stylestudio", error="invalid_token"'
    ok = await echo.get("/v1/things/1")
    assert "www-authenticate" not in ok.headers
