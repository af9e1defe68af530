"""The files routes of API.md, end to end through the REST gateway."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image, PngImagePlugin

from tests.files.samples import image_bytes
from tests.harness import Platform


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


HTML = b"<html><body><script>fetch('/v1/users/me')</script></body></html>"


def png_html_polyglot() -> bytes:
    """A valid PNG that is also an HTML page: script in a text chunk and after IEND."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", HTML.decode())
    out = io.BytesIO()
    Image.new("RGB", (40, 30), "navy").save(out, "PNG", pnginfo=info)
    return out.getvalue() + HTML


async def test_a_png_html_polyglot_is_stored_and_served_only_as_a_png(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    created = await rest.post(
        "/v1/files",
        headers=_auth(token),
        data={"category": "product_image"},
        files={"file": ("page \u00e9t\u00e9.html", png_html_polyglot(), "text/html")},
    )
    assert created.status_code == 200, created.text
    file = created.json()
    assert (file["contentType"], file["format"]) == ("image/png", "png")
    downloaded = await rest.get(f"/v1/files/{file['id']}/content", headers=_auth(token))
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] == "image/png"
    assert downloaded.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in downloaded.headers["content-security-policy"]
    assert "default-src 'none'" in downloaded.headers["content-security-policy"]
    disposition = downloaded.headers["content-disposition"]
    assert disposition.startswith('inline; filename="page _t_.html"')
    assert disposition.endswith("filename*=UTF-8''page%20%C3%A9t%C3%A9.html")
    assert b"<html" not in downloaded.content and b"<script" not in downloaded.content
    with Image.open(io.BytesIO(downloaded.content)) as image:
        assert (image.format, image.size) == ("PNG", (40, 30))


async def test_an_upload_idempotency_key_reused_with_another_file_is_409(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    headers = _auth(token) | {"Idempotency-Key": "upload-once"}

    async def upload(content: bytes) -> httpx.Response:
        return await rest.post(
            "/v1/files",
            headers=headers,
            data={"category": "product_image"},
            files={"file": ("shoe.png", content, "image/png")},
        )

    first = await upload(image_bytes("PNG", (30, 20)))
    again = await upload(image_bytes("PNG", (30, 20)))
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    other = await upload(image_bytes("PNG", (31, 20)))
    assert other.status_code == 409 and other.json()["error"]["reason"] == "CONFLICT"
    listed = (await rest.get("/v1/files", headers=_auth(token))).json()
    assert [f["id"] for f in listed["files"]] == [first.json()["id"]]
