"""Server streams as text/event-stream, multipart uploads as client streams, HttpBody downloads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import Any

import httpx
import jsonschema
import pytest

from tests.gateway.conftest import TEST_MAX_UPLOAD_BYTES
from tests.gateway.echo_service import EchoService
from tests.harness.rest import schema_validator

NINE_MIB = 9 * 1024 * 1024


def events_of(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue  # comments are heartbeats
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


async def test_sse_delivers_every_message_in_order_and_ends_after_the_terminal_one(
    echo: httpx.AsyncClient,
) -> None:
    async with echo.stream("GET", "/v1/count/25:watch") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        text = "".join([chunk async for chunk in response.aiter_text()])
    events = events_of(text)
    assert [data["n"] for _, data in events] == list(range(1, 26))
    assert [data["last"] for _, data in events] == [False] * 24 + [True]


async def test_every_event_matches_the_schema_the_document_names_for_it(echo: httpx.AsyncClient) -> None:
    """The stream is text to OpenAPI 3.0 (what generated clients read it as); each event's
    JSON has its schema named beside it, and holds to it: messages and the error alike."""
    document = (await echo.get("/openapi.json")).json()
    stream = document["paths"]["/v1/count/{to}:watch"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    assert stream["text/event-stream"]["schema"]["type"] == "string"
    named = stream["text/event-stream"]["x-event-schemas"]
    assert named == {
        "message": {"$ref": "#/components/schemas/Tick"},
        "error": {"$ref": "#/components/schemas/Error"},
    }
    validators = {kind: schema_validator(document, schema) for kind, schema in named.items()}
    events = events_of((await echo.get("/v1/count/10:watch", params={"failAt": 4})).text)
    assert [kind for kind, _ in events] == ["message"] * 3 + ["error"]
    for kind, data in events:
        validators[kind].validate(data)
    with pytest.raises(jsonschema.ValidationError):
        validators["message"].validate({"n": 1, "last": True, "unexpected": 1})


async def test_a_quiet_event_stream_gets_heartbeat_comments(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/count/2:watch", params={"delayMs": 500})
    assert response.status_code == 200
    assert ": keep-alive\n\n" in response.text
    assert [data["n"] for _, data in events_of(response.text)] == [1, 2]


async def test_a_client_that_goes_away_cancels_the_stream(
    echo: httpx.AsyncClient, echo_server: tuple[EchoService, str]
) -> None:
    service = echo_server[0]
    before = service.canceled_streams
    async with echo.stream("GET", "/v1/count/50:watch", params={"delayMs": 100}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break  # one event, then hang up
    for _ in range(50):
        if service.canceled_streams > before:
            break
        await asyncio.sleep(0.05)
    assert service.canceled_streams == before + 1


async def test_sse_failure_after_the_first_event_is_an_error_event(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/count/10:watch", params={"failAt": 4})
    assert response.status_code == 200
    events = events_of(response.text)
    assert [data["n"] for kind, data in events if kind == "message"] == [1, 2, 3]
    kind, data = events[-1]
    assert kind == "error"
    # UNAVAILABLE without ErrorInfo (the stream broke in transport): the service named, no provider.
    assert (data["error"]["status"], data["error"]["reason"]) == ("UNAVAILABLE", "SERVICE_UNAVAILABLE")
    assert data["error"]["details"] == {"dependency": "echo"}


async def test_sse_failure_before_the_first_event_is_a_json_error(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/count/1000:watch")
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


async def test_nine_mib_upload_and_download_round_trip_byte_for_byte(echo: httpx.AsyncClient) -> None:
    content = os.urandom(NINE_MIB)
    response = await echo.post(
        "/v1/blobs",
        data={"category": "product_image"},
        files={"file": ("shirt.png", content, "image/png")},
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["filename"] == "shirt.png"
    assert summary["contentType"] == "image/png"
    assert summary["category"] == "product_image"
    assert summary["size"] == str(NINE_MIB)
    assert summary["sha256"] == hashlib.sha256(content).hexdigest()
    assert summary["chunks"] > 1  # streamed in chunks, not as one message

    async with echo.stream("GET", f"/v1/blobs/{summary['id']}/content") as download:
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        received = b"".join([chunk async for chunk in download.aiter_bytes()])
    assert received == content


async def test_content_of_a_type_the_route_does_not_declare_is_served_as_octet_stream(
    echo: httpx.AsyncClient,
) -> None:
    """The document lists what a download may be (image/png, image/jpeg for the echo's); a
    stored type outside it (a page, here) goes out as bytes, not as what it claims."""
    document = (await echo.get("/openapi.json")).json()
    declared = document["paths"]["/v1/blobs/{id}/content"]["get"]["responses"]["200"]["content"]
    assert list(declared) == ["image/png", "image/jpeg", "application/octet-stream"]
    for claimed, served in (("text/html", "application/octet-stream"), ("image/jpeg", "image/jpeg")):
        files = {"file": ("page.html", b"<script>alert(1)</script>", claimed)}
        summary = (await echo.post("/v1/blobs", data={"category": "avatar"}, files=files)).json()
        download = await echo.get(f"/v1/blobs/{summary['id']}/content")
        assert download.status_code == 200
        assert download.headers["content-type"] == served
        assert download.headers["x-content-type-options"] == "nosniff"


async def test_a_service_refusing_an_upload_midway_answers_with_its_error(echo: httpx.AsyncClient) -> None:
    # Repeated: the service's answer races the gateway's next chunk (see streaming._send).
    content = os.urandom(2 * 1024 * 1024)
    for _ in range(15):
        response = await echo.post(
            "/v1/blobs", data={"category": "reject"}, files={"file": ("a.exe", content, "application/x-exe")}
        )
        assert response.status_code == 415, response.text
        assert response.json()["error"]["reason"] == "INVALID_FILE_TYPE"


async def test_download_of_a_missing_blob_is_a_json_404(echo: httpx.AsyncClient) -> None:
    response = await echo.get("/v1/blobs/missing/content")
    assert response.status_code == 404
    assert response.json()["error"]["reason"] == "NOT_FOUND"


async def test_upload_without_a_file_part_is_400(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/blobs", data={"category": "avatar"}, files={"other": (None, "x")})
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "file"


def multipart(boundary: str, *parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body with the parts in the given order: (name, filename or None, content)."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: image/png\r\n" if filename else ""
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + content + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("size", [7, 3 * 1024 * 1024])  # in memory, and spooled to disk
async def test_upload_with_the_file_before_its_fields_is_accepted(echo: httpx.AsyncClient, size: int) -> None:
    content = os.urandom(size)
    boundary = "b0undary"
    body = multipart(boundary, ("file", "a.png", content), ("category", None, b"avatar"))
    response = await echo.post(
        "/v1/blobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert (summary["category"], summary["filename"], summary["size"]) == ("avatar", "a.png", str(size))
    assert summary["sha256"] == hashlib.sha256(content).hexdigest()


async def test_upload_with_a_field_after_a_streaming_file_is_400(echo: httpx.AsyncClient) -> None:
    # Fields before the file start the stream at once; one after it can no longer be used.
    boundary = "b0undary"
    body = multipart(
        boundary, ("category", None, b"avatar"), ("file", "a.png", b"PNGDATA"), ("filename", None, b"b.png")
    )
    response = await echo.post(
        "/v1/blobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "filename"


async def test_upload_with_an_unknown_form_field_is_400(echo: httpx.AsyncClient) -> None:
    response = await echo.post(
        "/v1/blobs", data={"colour": "red"}, files={"file": ("a.png", b"x", "image/png")}
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "colour"


async def test_upload_that_is_not_multipart_is_415(echo: httpx.AsyncClient) -> None:
    response = await echo.post("/v1/blobs", json={"file": "x"})
    assert response.status_code == 415


async def test_truncated_multipart_is_400(echo: httpx.AsyncClient) -> None:
    body = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nabc'
    response = await echo.post(
        "/v1/blobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=xx"}
    )
    assert response.status_code == 400


async def test_upload_over_the_limit_is_413(echo: httpx.AsyncClient) -> None:
    content = b"\0" * (TEST_MAX_UPLOAD_BYTES + 1)
    response = await echo.post("/v1/blobs", files={"file": ("big.bin", content, "application/octet-stream")})
    assert response.status_code == 413
    assert response.json()["error"]["reason"] == "FILE_TOO_LARGE"


async def test_chunked_upload_over_the_limit_is_413(echo: httpx.AsyncClient) -> None:
    boundary = "lim"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'.encode()

    async def body():  # type: ignore[no-untyped-def]
        yield head
        for _ in range(TEST_MAX_UPLOAD_BYTES // (1024 * 1024) + 2):
            yield b"\0" * (1024 * 1024)

    response = await echo.post(
        "/v1/blobs", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413
