"""Requests become the right request messages: path variables, query parameters, bodies, verbs."""

from __future__ import annotations

import httpx

from tests.gateway.conftest import USER


async def test_path_variable_reaches_the_request(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/things/abc-123")
    assert response.status_code == 200
    assert response.json() == {"id": "abc-123", "note": "variable"}


async def test_literal_segment_wins_over_a_variable(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/things/special")
    assert response.json() == {"id": "special", "note": "literal"}


async def test_percent_encoded_path_variable_is_decoded_once(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/things/a%2Fb%20c")
    assert response.json()["id"] == "a/b c"


async def test_query_parameters_fill_typed_fields(echo: httpx.AsyncClient) -> None:
    response = await echo.get(
        "/v1/things",
        params=[
            ("pageSize", "5"),
            ("page_token", "next"),
            ("since", "2024-05-01T12:30:00Z"),
            ("kind", "KIND_LARGE"),
            ("tags", "red"),
            ("tags", "blue"),
            ("limit", "9007199254740993"),
            ("includeArchived", "true"),
            ("filter.minSize", "3"),
            ("filter.label", "x"),
            ("ratio", "0.5"),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["echo"] == {
        "pageSize": 5,
        "pageToken": "next",
        "since": "2024-05-01T12:30:00Z",
        "kind": "KIND_LARGE",
        "tags": ["red", "blue"],
        "limit": "9007199254740993",
        "includeArchived": True,
        "filter": {"minSize": 3, "label": "x"},
        "ratio": 0.5,
    }


async def test_fields_without_presence_are_always_printed(echo: httpx.AsyncClient) -> None:
    document = (await echo.get("/v1/things")).json()
    assert document["nextPageToken"] == ""
    assert document["things"] == []
    assert document["echo"]["pageSize"] == 0


async def test_enum_query_parameter_by_number(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/things", params={"kind": "1"})
    assert response.json()["echo"]["kind"] == "KIND_SMALL"


async def test_body_star_fills_the_request(echo: httpx.AsyncClient) -> None:
    thing = {
        "id": "t1",
        "name": "Shirt",
        "size": "42",
        "kind": "KIND_SMALL",
        "tags": ["a"],
        "attributes": {"color": "red", "nested": {"n": 1.5}},
        "createdAt": "2024-01-02T03:04:05Z",
        "comment": "",
    }
    response = await echo.post("/v1/things", json=thing, headers=USER)
    assert response.status_code == 200, response.text
    assert response.json() == thing


async def test_snake_case_body_fields_are_accepted(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/things", json={"created_at": "2024-01-02T03:04:05Z"}, headers=USER)
    assert response.json()["createdAt"] == "2024-01-02T03:04:05Z"


async def test_field_body_and_nested_path_variable(echo: httpx.AsyncClient) -> None:
    response = await echo.patch(
        "/v1/things/t9", params={"reason": "rename"}, json={"name": "New"}, headers=USER
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["thing"]["id"] == "t9"
    assert body["thing"]["name"] == "New"
    assert body["reason"] == "rename"


async def test_custom_verb_with_empty_body(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/things/t5:archive", headers=USER)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "t5", "reason": ""}


async def test_path_variable_overrides_the_same_field_in_the_body(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/things/real:archive", json={"id": "fake", "reason": "r"}, headers=USER)
    assert response.json() == {"id": "real", "reason": "r"}


async def test_webhook_body_arrives_byte_for_byte_with_its_signature_headers(echo: httpx.AsyncClient) -> None:
    import hashlib

    raw = b'{"id": "evt_1",  "type":"payment_intent.succeeded"}\n'
    response = await echo.post(
        "/v1/hooks/stripe",
        content=raw,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": "t=1,v1=abc",
            "webhook-id": "msg_1",
            "webhook-timestamp": "1700000000",
            "webhook-signature": "v1,xyz",
        },
    )
    assert response.status_code == 200, response.text
    reply = response.json()
    assert reply["source"] == "stripe"
    assert reply["contentType"] == "application/json; charset=utf-8"
    assert reply["sha256"] == hashlib.sha256(raw).hexdigest()
    assert reply["headers"]["stripe-signature"] == "t=1,v1=abc"
    assert reply["headers"]["webhook-id"] == "msg_1"
    assert reply["headers"]["webhook-timestamp"] == "1700000000"
    assert reply["headers"]["webhook-signature"] == "v1,xyz"


async def test_authorization_idempotency_key_and_request_id_reach_the_service(
    echo: httpx.AsyncClient,
) -> None:
    response = await echo.get(
        "/v1/whoami", headers={**USER, "Idempotency-Key": "key-1", "X-Request-Id": "req-42"}
    )
    assert response.status_code == 200, response.text
    metadata = response.json()["metadata"]
    assert metadata["authorization"] == "Bearer test-token"
    assert metadata["idempotency-key"] == "key-1"
    assert metadata["x-request-id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"
    trace_id = response.headers["x-trace-id"]
    assert len(trace_id) == 32
    assert metadata["traceparent"].split("-")[1] == trace_id


async def test_request_id_is_generated_when_absent_and_trace_continues_from_traceparent(
    echo: httpx.AsyncClient,
) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await echo.get("/v1/things/x", headers={"traceparent": parent})
    assert len(response.headers["x-request-id"]) >= 16
    assert response.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
    headers = {**USER, "traceparent": parent, "tracestate": "vendor=opaque"}
    metadata = (await echo.get("/v1/whoami", headers=headers)).json()["metadata"]
    assert metadata["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert not metadata["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331")
    assert metadata["tracestate"] == "vendor=opaque"
