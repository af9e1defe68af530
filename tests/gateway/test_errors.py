"""gRPC status + ErrorInfo -> API.md's HTTP status and error body; the gateway's own 4xx answers."""

from __future__ import annotations

import httpx
import pytest

from gateway.errors import HTTP_STATUS_BY_CODE
from kit.errors import TRANSPORT_FAILURES
from tests.gateway.conftest import TEST_MAX_BODY_BYTES, USER

CODE_CASES = [
    (code.name, status)
    for code, status in HTTP_STATUS_BY_CODE.items()
    # UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED without ErrorInfo are transport failures
    # (test_a_transport_failure_is_503_...).
    if code.name != "OK" and code not in TRANSPORT_FAILURES
]


@pytest.mark.parametrize(("code", "http_status"), CODE_CASES)
async def test_each_status_code_maps_to_its_http_status(
    echo: httpx.AsyncClient, code: str, http_status: int
) -> None:
    response = await echo.post("/v1/fail", json={"code": code, "message": "told to fail"})
    assert response.status_code == http_status
    error = response.json()["error"]
    assert error["code"] == http_status
    assert error["status"] == code
    assert set(error) == {"code", "status", "reason", "message", "details"}
    assert response.headers["x-request-id"]


REASON_CASES = [
    ("FAILED_PRECONDITION", "INSUFFICIENT_TOKENS", 402),
    ("INVALID_ARGUMENT", "FILE_TOO_LARGE", 413),
    ("INVALID_ARGUMENT", "INVALID_FILE_TYPE", 415),
    ("RESOURCE_EXHAUSTED", "RATE_LIMITED", 429),
    ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", 429),
    ("PERMISSION_DENIED", "FEATURE_NOT_IN_PLAN", 403),
    ("PERMISSION_DENIED", "FORBIDDEN", 403),
    ("FAILED_PRECONDITION", "CONFLICT", 409),
    ("ALREADY_EXISTS", "CONFLICT", 409),
    ("UNAUTHENTICATED", "UNAUTHORIZED", 401),
    ("NOT_FOUND", "NOT_FOUND", 404),
    ("INVALID_ARGUMENT", "VALIDATION_ERROR", 400),
    ("INTERNAL", "PROCESSING_ERROR", 500),
    ("UNAVAILABLE", "PROVIDER_UNAVAILABLE", 503),
    ("UNAVAILABLE", "SERVICE_UNAVAILABLE", 503),
]


@pytest.mark.parametrize(("code", "reason", "http_status"), REASON_CASES)
async def test_each_reason_maps_to_its_http_status(
    echo: httpx.AsyncClient, code: str, reason: str, http_status: int
) -> None:
    response = await echo.post("/v1/fail", json={"code": code, "reason": reason, "message": "m"})
    assert response.status_code == http_status
    assert response.json()["error"]["reason"] == reason


async def test_insufficient_tokens_body_is_api_md_example(echo: httpx.AsyncClient) -> None:
    message = "Insufficient tokens. Required: 3, Available: 1"
    response = await echo.post(
        "/v1/fail",
        json={
            "code": "FAILED_PRECONDITION",
            "reason": "INSUFFICIENT_TOKENS",
            "message": message,
            "details": {"required": "3", "available": "1"},
        },
    )
    assert response.status_code == 402
    assert response.json() == {
        "error": {
            "code": 402,
            "status": "FAILED_PRECONDITION",
            "reason": "INSUFFICIENT_TOKENS",
            "message": message,
            "details": {"required": "3", "available": "1"},
        }
    }


async def test_rate_limited_carries_retry_after_from_retry_info(echo: httpx.AsyncClient) -> None:
    response = await echo.post(
        "/v1/fail",
        json={"code": "RESOURCE_EXHAUSTED", "reason": "RATE_LIMITED", "retryAfterSeconds": 12.2},
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "13"


async def test_rate_limited_without_retry_info_still_says_when_to_retry(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/fail", json={"code": "RESOURCE_EXHAUSTED", "reason": "RATE_LIMITED"})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize(
    ("code", "reason", "http_status"),
    [
        ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", 429),
        ("UNAVAILABLE", "SERVICE_UNAVAILABLE", 503),
        ("UNAVAILABLE", "PROVIDER_UNAVAILABLE", 503),
    ],
)
async def test_every_429_and_503_says_when_to_retry(
    echo: httpx.AsyncClient, code: str, reason: str, http_status: int
) -> None:
    response = await echo.post("/v1/fail", json={"code": code, "reason": reason})
    assert response.status_code == http_status
    assert int(response.headers["retry-after"]) > 0


@pytest.mark.parametrize("code", sorted(code.name for code in TRANSPORT_FAILURES))
async def test_a_transport_failure_is_503_naming_the_service_never_a_provider(
    echo: httpx.AsyncClient, code: str
) -> None:
    # No ErrorInfo: the status did not come from the service's code (a refused or dropped
    # connection, a call that timed out, a call a stopping server cancelled: a roll-out's
    # SIGTERM, tests/platform/test_rollout.py).
    response = await echo.post("/v1/fail", json={"code": code, "message": "connect failed 10.1.2.3:50051"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert (error["status"], error["reason"]) == ("UNAVAILABLE", "SERVICE_UNAVAILABLE")
    assert error["details"] == {"dependency": "echo"}
    assert error["message"] == "The echo service is unavailable; try again shortly"


async def test_failed_precondition_without_a_reason_is_400(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/fail", json={"code": "FAILED_PRECONDITION", "message": "no"})
    assert response.status_code == 400


async def test_unknown_error_text_is_not_passed_on(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/fail", json={"code": "UNKNOWN", "message": "Traceback: secret stuff"})
    assert response.status_code == 500
    assert "secret" not in response.text


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer two words", "token-only"])
async def test_user_route_without_a_well_formed_bearer_is_401(
    echo: httpx.AsyncClient, echo_server: object, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await echo.get("/v1/whoami", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["reason"] == "UNAUTHORIZED"


async def test_public_route_needs_no_token(echo: httpx.AsyncClient) -> None:
    assert (await echo.get("/v1/things/x")).status_code == 200


async def test_unknown_route_is_404_and_wrong_method_is_405(echo: httpx.AsyncClient) -> None:
    missing = await echo.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["reason"] == "NOT_FOUND"
    wrong = await echo.delete("/v1/things")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "POST"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"name": ', None),
        (b"[1, 2]", None),
        (b'{"size": "lots"}', "size"),
        (b'{"kind": "KIND_HUGE"}', "kind"),
        (b'{"tags": "not-a-list"}', "tags"),
        (b'{"createdAt": "yesterday"}', "createdAt"),
        (b'{"nope": 1}', "nope"),
        (b'{"attributes": 5}', "attributes"),
        (b"\xff\xfe", None),
    ],
)
async def test_bad_json_is_400_naming_the_field(
    echo: httpx.AsyncClient, body: bytes, field: str | None
) -> None:
    response = await echo.post(
        "/v1/things", content=body, headers={**USER, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["reason"] == "VALIDATION_ERROR"
    if field:
        assert error["details"]["field"] == field
        assert field in error["message"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=ten", "pageSize"),
        ("pageSize=99999999999", "pageSize"),
        ("since=not-a-time", "since"),
        ("kind=KIND_HUGE", "kind"),
        ("includeArchived=maybe", "includeArchived"),
        ("ratio=abc", "ratio"),
        ("unknownParam=1", "unknownParam"),
        ("pageSize=1&pageSize=2", "pageSize"),
        ("filter=x", "filter"),
    ],
)
async def test_bad_query_parameter_is_400_naming_it(echo: httpx.AsyncClient, query: str, field: str) -> None:
    response = await echo.get(f"/v1/things?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"] == field


async def test_oversized_body_is_413(echo: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * TEST_MAX_BODY_BYTES + b'"}'
    response = await echo.post(
        "/v1/things", content=big, headers={**USER, "Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_oversized_chunked_body_is_413(echo: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"x" * TEST_MAX_BODY_BYTES

    response = await echo.post("/v1/hooks/stripe", content=chunks())
    assert response.status_code == 413


async def test_non_ascii_forwarded_header_is_400(echo: httpx.AsyncClient) -> None:
    response = await echo.get(
        "/v1/whoami",
        headers=[(b"Authorization", b"Bearer t"), (b"Idempotency-Key", "caf\xe9".encode("latin-1"))],
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "idempotency-key"


async def test_a_bad_request_id_is_replaced(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/things/x", headers={"X-Request-Id": "has spaces in it"})
    assert response.headers["x-request-id"] != "has spaces in it"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/things/%ff%fe",
        "/v1/things/%",
        "/v1/things/" + "a" * 5000,
        "/v1/things?%zz=1",
        "/v1/things?pageSize=%ff",
        "/v1/count/abc:watch",
        "/v1/count/-5:watch",
        "/v1//things",
        "/v1/blobs/..%2F..%2Fetc%2Fpasswd/content",
    ],
)
async def test_malformed_paths_never_get_a_5xx(echo: httpx.AsyncClient, path: str) -> None:
    response = await echo.get(path)
    assert response.status_code < 500, (path, response.status_code, response.text)


async def test_malformed_bodies_never_get_a_5xx(echo: httpx.AsyncClient) -> None:
    bodies = [
        b"",
        b"null",
        b'"text"',
        b"{" * 5000,
        b'{"attributes": ' + b'{"a":' * 200 + b"1" + b"}" * 200 + b"}",
        b'{"name": "\\ud800"}',
        b'{"size": 1e400}',
        b'{"size": "99999999999999999999999"}',
        b'{"tags": [null]}',
        b'{"createdAt": "9999-99-99T00:00:00Z"}',
    ]
    for body in bodies:
        response = await echo.post(
            "/v1/things", content=body, headers={**USER, "Content-Type": "application/json"}
        )
        assert response.status_code < 500, (body[:40], response.status_code, response.text)
