"""The gateway's edge: request checks before any call, header limits, and nothing of gRPC's
own making (or of a long input) in what a client reads. Over the echo service, which checks
nothing itself, so whatever is refused here was refused by the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.gateway.conftest import USER, EchoBuild, run_gateway
from tests.gateway.echo_service import SERVICE
from tests.harness.platform import free_port

ERROR_KEYS = {"code", "status", "reason", "message", "details"}


def refused(response: httpx.Response, status: int = 400) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["code"] == status
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("character", ["\u0000", "\u0007", "\u001b", "\u007f", "\u0085", "\n"])
async def test_a_control_character_in_a_body_field_is_refused_naming_it(
    echo: httpx.AsyncClient, character: str
) -> None:
    response = await echo.post("/v1/things", json={"name": f"a{character}b"}, headers=USER)
    error = refused(response)
    assert (error["reason"], error["details"]) == ("VALIDATION_ERROR", {"field": "name"})


async def test_query_path_repeated_and_nested_fields_are_checked_too(echo: httpx.AsyncClient) -> None:
    assert refused(await echo.get("/v1/things/a%00b"))["details"] == {"field": "id"}
    assert refused(await echo.get("/v1/things?tags=ok&tags=a%01"))["details"] == {"field": "tags[1]"}
    assert refused(await echo.get("/v1/things?filter.label=%1b"))["details"] == {"field": "filter.label"}
    body = {"name": "ok", "attributes": {"outer": {"inner": ["fine", "bad\u0000"]}}}
    error = refused(await echo.post("/v1/things", json=body, headers=USER))
    assert error["details"] == {"field": 'attributes["outer"]["inner"][1]'}


async def test_a_multiline_field_takes_line_breaks_and_a_raw_text_field_anything(
    echo: httpx.AsyncClient,
) -> None:
    created = await echo.post("/v1/things", json={"name": "n", "comment": "one\r\n\ttwo"}, headers=USER)
    assert created.status_code == 200 and created.json()["comment"] == "one\r\n\ttwo"
    error = refused(await echo.post("/v1/things", json={"comment": "one\u0000"}, headers=USER))
    assert error["details"] == {"field": "comment"}
    archived = await echo.post("/v1/things/t1:archive", json={"reason": "raw\u0000\u0007"}, headers=USER)
    assert archived.status_code == 200 and archived.json()["reason"] == "raw\u0000\u0007"


@pytest.mark.parametrize("kind", ["99", "-1", "2147483647"])
async def test_an_enum_number_outside_its_values_is_refused_from_a_query_or_a_body(
    echo: httpx.AsyncClient, kind: str
) -> None:
    assert refused(await echo.get(f"/v1/things?kind={kind}"))["details"] == {"field": "kind"}
    body = b'{"name": "n", "kind": ' + kind.encode() + b"}"
    response = await echo.post(
        "/v1/things", content=body, headers={**USER, "Content-Type": "application/json"}
    )
    assert refused(response)["details"] == {"field": "kind"}


@pytest.mark.parametrize("size", ["9007199254740992", "9223372036854775807", "-9223372036854775808"])
async def test_a_64_bit_integer_without_declared_bounds_stops_at_2_to_the_53(
    echo: httpx.AsyncClient, size: str
) -> None:
    response = await echo.post("/v1/things", json={"name": "n", "size": size}, headers=USER)
    assert refused(response)["details"] == {"field": "size"}
    assert (await echo.post("/v1/things", json={"size": "9007199254740991"}, headers=USER)).status_code == 200


@pytest.mark.parametrize("limit", ["9223372036854775807", "-9223372036854775808"])
async def test_a_declared_full_range_takes_any_int64(echo: httpx.AsyncClient, limit: str) -> None:
    response = await echo.get("/v1/things", params={"limit": limit})
    assert response.status_code == 200 and response.json()["echo"]["limit"] == limit


async def test_a_struct_nested_too_deep_is_a_400(echo: httpx.AsyncClient) -> None:
    deep: dict[str, object] = {}
    for _ in range(200):
        deep = {"k": deep}
    refused(await echo.post("/v1/things", json={"attributes": deep}, headers=USER))


async def test_an_error_quotes_no_more_than_a_short_prefix_of_the_input(echo: httpx.AsyncClient) -> None:
    long = "x" * 60_000  # under the echo gateway's 64 KiB body limit
    for response in (
        await echo.get(f"/v1/things?{long[:10_000]}=1"),
        await echo.post("/v1/things", json={"size": long}, headers=USER),
        await echo.post("/v1/things", json={"name": long + "\u0000"}, headers=USER),
    ):
        error = refused(response)
        assert len(str(error["message"])) <= 400 and "x" * 400 not in response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer " + "a" * 16 * 1024},
        {"Idempotency-Key": "k" * 5000},
        {"User-Agent": "u" * 5000},
        {f"X-Filler-{n}": "f" * 4000 for n in range(9)},
    ],
    ids=["authorization", "idempotency-key", "user-agent", "all-together"],
)
async def test_oversized_headers_are_431_before_any_call(
    echo: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for route in ("/v1/things/x", "/v1/whoami", "/healthz"):
        error = refused(await echo.get(route, headers=headers), 431)
        assert error["reason"] == "VALIDATION_ERROR" and "limit" in error["details"]  # type: ignore[operator]


async def test_headers_that_fit_alone_but_not_together_in_grpc_metadata_are_431(
    echo: httpx.AsyncClient,
) -> None:
    headers = {"Authorization": "Bearer " + "a" * 4000, "Idempotency-Key": "k" * 4000}
    refused(await echo.get("/v1/whoami", headers=headers), 431)
    # A large header the gateway neither reads nor forwards is no one's business but the total's.
    assert (await echo.get("/v1/things/x", headers={"X-Filler": "f" * 6000})).status_code == 200


async def test_a_status_too_large_for_grpc_is_not_passed_on_as_a_rate_limit(echo: httpx.AsyncClient) -> None:
    """A service that answers with a huge status makes the gateway's own gRPC client fail
    (RESOURCE_EXHAUSTED, "received metadata size exceeds hard limit"): no 429, no gRPC text."""
    body = {"code": "INVALID_ARGUMENT", "reason": "VALIDATION_ERROR", "message": "m" * 60_000}
    response = await echo.post("/v1/fail", json=body)
    error = refused(response, 500)
    assert error["reason"] == "INTERNAL" and error["message"] == "Internal error"
    assert "metadata" not in response.text and "retry-after" not in response.headers


@pytest.fixture
async def unreachable(echo_build: EchoBuild) -> AsyncIterator[httpx.AsyncClient]:
    running = await run_gateway(echo_build.descriptor_set, {SERVICE: f"127.0.0.1:{free_port()}"})
    async with httpx.AsyncClient(base_url=running.url, timeout=30.0) as client:
        yield client
    await running.close()


async def test_a_service_that_cannot_be_reached_is_503_in_plain_words(unreachable: httpx.AsyncClient) -> None:
    response = await unreachable.get("/v1/things/x")
    error = refused(response, 503)
    assert error["reason"] == "SERVICE_UNAVAILABLE" and error["details"] == {"dependency": "echo"}
    assert error["message"] == "The echo service is unavailable; try again shortly"
    assert response.headers["retry-after"] == "1"
    assert "127.0.0.1" not in response.text and "connect" not in response.text
