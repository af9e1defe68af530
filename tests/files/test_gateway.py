"""The files routes of API.md, end to end through the REST gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.files.samples import image_bytes
from tests.harness import Platform


@pytest.fixture(scope="module")
async def rest(files_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    files_platform.start("gateway")
    async with httpx.AsyncClient(base_url=files_platform.gateway_url, timeout=30.0) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, files_platform.logs("gateway")[-3000:]
            await asyncio.sleep(0.2)
        yield client
    files_platform.stop("gateway")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_upload_read_download_usage_and_delete_over_rest(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    content = image_bytes("JPEG", (90, 60), gps=True)
    created = await rest.post(
        "/v1/files",
        headers=_auth(token),
        data={"category": "product_image"},
        files={"file": ("../shoe.jpg", content, "image/jpeg")},
    )
    assert created.status_code == 200, created.text
    file = created.json()
    assert (file["filename"], file["format"], file["width"], file["height"]) == ("shoe.jpg", "jpeg", 90, 60)
    assert file["contentType"] == "image/jpeg" and file["category"] == "product_image"

    shown = await rest.get(f"/v1/files/{file['id']}", headers=_auth(token))
    assert shown.status_code == 200 and shown.json()["sha256"] == file["sha256"]
    downloaded = await rest.get(f"/v1/files/{file['id']}/content", headers=_auth(token))
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"].startswith("image/jpeg")
    assert len(downloaded.content) == int(file["size"])
    assert downloaded.headers["etag"] == f'"{file["sha256"]}"'
    assert downloaded.headers["cache-control"].startswith("private, max-age=")

    usage = (await rest.get("/v1/files/usage", headers=_auth(token))).json()
    assert int(usage["totalBytes"]) == int(file["size"]) and usage["fileCount"] == 1
    listed = (await rest.get("/v1/files", params={"category": "product_image"}, headers=_auth(token))).json()
    assert [f["id"] for f in listed["files"]] == [file["id"]]

    _, stranger = files_platform.user_token()
    for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        foreign = await rest.request(method, f"/v1/files/{file['id']}{path}", headers=_auth(stranger))
        assert foreign.status_code == 404, (method, path, foreign.text)

    deleted = await rest.delete(f"/v1/files/{file['id']}", headers=_auth(token))
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert (await rest.get(f"/v1/files/{file['id']}", headers=_auth(token))).status_code == 404


@pytest.mark.parametrize(
    ("content", "status", "reason"),
    [(b"<html>hi</html>", 415, "INVALID_FILE_TYPE"), (image_bytes("GIF"), 415, "INVALID_FILE_TYPE")],
)
async def test_refused_uploads_get_the_contract_status(
    files_platform: Platform, rest: httpx.AsyncClient, content, status, reason
):
    _, token = files_platform.user_token()
    response = await rest.post(
        "/v1/files",
        headers=_auth(token),
        data={"category": "avatar"},
        files={"file": ("a.png", content, "image/png")},
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["reason"] == reason


async def test_uploads_without_a_token_are_401(rest: httpx.AsyncClient):
    response = await rest.post(
        "/v1/files", data={"category": "avatar"}, files={"file": ("a.png", b"x", "image/png")}
    )
    assert response.status_code == 401
