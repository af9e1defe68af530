"""Signed links (File.url, File.thumbnailUrl) and conditional downloads, through the gateway.

The links are checked against an implementation of the documented signature written here,
independently of the service's (docs/files.md "Signed links").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import time
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pydantic
import pytest
from PIL import Image
from pydantic import SecretStr

from kit.settings import MIN_SECRET_BYTES
from services.files.settings import FilesSettings
from tests.files.conftest import URL_SIGNING_KEYS, FilesDatabase
from tests.files.samples import image_bytes
from tests.harness import Platform


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed_url(base: str, file_id: str, *, expires: int, kid: str, rendition: str = "", key: str = "") -> str:
    secret = (key or URL_SIGNING_KEYS[kid]).encode()
    digest = hmac.new(secret, f"{file_id}:{rendition}:{expires}:{kid}".encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    query = ({"rendition": rendition} if rendition else {}) | {"expires": expires, "kid": kid, "sig": sig}
    return f"{base}/v1/files/{file_id}/content:signed?{urlencode(query)}"


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {name: values[0] for name, values in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(query)).geturl()


async def _upload(
    rest: httpx.AsyncClient, token: str, content: bytes, name: str = "look.png"
) -> dict[str, Any]:
    created = await rest.post(
        "/v1/files",
        headers=_auth(token),
        data={"category": "product_image"},
        files={"file": (name, content, "image/png")},
    )
    assert created.status_code == 200, created.text
    return dict(created.json())


def _assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"], error["reason"]) == (403, "PERMISSION_DENIED", "FORBIDDEN")
    assert error["message"]


async def test_a_signed_link_serves_the_exact_bytes_without_authorization(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (600, 300)), name="summer look.png")
    url, expires_at = file["url"], datetime.fromisoformat(file["urlExpiresAt"])
    assert url.startswith(f"{files_platform.gateway_url}/v1/files/{file['id']}/content:signed?")
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    assert expires == int(expires_at.timestamp())
    assert 3600 - 300 <= expires - time.time() <= 3600  # the default lifetime, on a 5-minute grid
    assert parse_qs(urlsplit(url).query)["kid"] == ["k2"]  # the current key signs new links
    assert url == signed_url(files_platform.gateway_url, file["id"], expires=expires, kid="k2")

    async with httpx.AsyncClient() as anonymous:  # a browser's <img src>: no Authorization header
        served = await anonymous.get(url)
    owner = await rest.get(f"/v1/files/{file['id']}/content", headers=_auth(token))
    assert served.status_code == 200, served.text
    assert served.content == owner.content and hashlib.sha256(served.content).hexdigest() == file["sha256"]
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-disposition"].startswith('inline; filename="summer look.png"')
    assert served.headers["etag"] == f'"{file["sha256"]}"'
    cache, max_age = served.headers["cache-control"].split(", max-age=")
    assert cache == "public" and 0 < int(max_age) <= expires - time.time() + 1

    again = await rest.get(url, headers={"If-None-Match": served.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == served.headers["etag"]
    changed = await rest.get(url, headers={"If-None-Match": '"another-version"'})
    assert changed.status_code == 200 and changed.content == served.content


async def test_downloads_answer_a_matching_if_none_match_with_304(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (30, 20)))
    path = f"/v1/files/{file['id']}/content"
    first = await rest.get(path, headers=_auth(token))
    assert first.headers["etag"] == f'"{file["sha256"]}"'
    for header in (first.headers["etag"], f'"x", W/{first.headers["etag"]}', "*"):
        cached = await rest.get(path, headers=_auth(token) | {"If-None-Match": header})
        assert (cached.status_code, cached.content) == (304, b""), header
        assert cached.headers["etag"] == first.headers["etag"]
        assert cached.headers["cache-control"] == first.headers["cache-control"]
    stale = await rest.get(path, headers=_auth(token) | {"If-None-Match": '"0000"'})
    assert stale.status_code == 200 and stale.content == first.content
    _, stranger = files_platform.user_token()  # a validator never reveals another user's file
    foreign = await rest.get(path, headers=_auth(stranger) | {"If-None-Match": "*"})
    assert foreign.status_code == 404


async def test_the_thumbnail_link_serves_a_small_rendition_made_once(
    files_platform: Platform, rest: httpx.AsyncClient, files_database: FilesDatabase
):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (800, 400)))
    assert parse_qs(urlsplit(file["thumbnailUrl"]).query)["rendition"] == ["thumbnail"]
    async with httpx.AsyncClient() as anonymous:
        first = await anonymous.get(file["thumbnailUrl"])
        second = await anonymous.get(file["thumbnailUrl"])
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/png"
    assert first.headers["x-content-type-options"] == "nosniff"
    with Image.open(io.BytesIO(first.content)) as thumbnail:
        assert (thumbnail.format, thumbnail.size) == ("PNG", (256, 128))
    assert second.content == first.content and second.headers["etag"] == first.headers["etag"]
    assert first.headers["etag"] != f'"{file["sha256"]}"'
    stored = files_database.scalar("SELECT thumbnail_key FROM files.files WHERE id = %s", file["id"])
    assert stored and str(stored).endswith(".thumb")


async def test_altered_expired_and_unknown_key_links_are_refused_with_403(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (40, 40)))
    other = await _upload(rest, token, image_bytes("PNG", (41, 41), color="red"))
    url = file["url"]
    expires = int(parse_qs(urlsplit(url).query)["expires"][0])
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    base = files_platform.gateway_url
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused = [
        with_query(url, sig=flipped),
        with_query(url, sig=""),
        with_query(url, expires=str(expires + 3600)),
        with_query(url, rendition="thumbnail"),
        with_query(url, kid="k1"),
        with_query(url, kid="no-such-key"),
        url.replace(file["id"], other["id"]),
        url.replace(file["id"], file["id"].upper()),
        signed_url(base, file["id"], expires=int(time.time()) - 1, kid="k2"),  # expired
        signed_url(base, file["id"], expires=expires, kid="k2", key="a key the service never had!!!!"),
    ]
    async with httpx.AsyncClient() as anonymous:
        for attempt in refused:
            _assert_refused(await anonymous.get(attempt))
        malformed = await anonymous.get(with_query(url, expires="soon"))
        assert malformed.status_code == 400, malformed.text
        assert (await anonymous.get(url)).status_code == 200  # the untouched link still works


async def test_a_deleted_files_link_is_refused(files_platform: Platform, rest: httpx.AsyncClient):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (40, 40)))
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(file["url"])).status_code == 200
        assert (await rest.delete(f"/v1/files/{file['id']}", headers=_auth(token))).status_code == 200
        _assert_refused(await anonymous.get(file["url"]))
        _assert_refused(await anonymous.get(file["thumbnailUrl"]))


async def test_links_signed_before_a_key_rotation_work_until_they_expire(
    files_platform: Platform, rest: httpx.AsyncClient
):
    _, token = files_platform.user_token()
    file = await _upload(rest, token, image_bytes("PNG", (40, 40)))
    base = files_platform.gateway_url
    # Signed with "k1", the key before the rotation (STYLESTUDIO_FILE_URL_PREVIOUS_KEYS).
    old = signed_url(base, file["id"], expires=int(time.time()) + 600, kid="k1")
    old_expired = signed_url(base, file["id"], expires=int(time.time()) - 1, kid="k1")
    async with httpx.AsyncClient() as anonymous:
        served = await anonymous.get(old)
        assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == file["sha256"]
        _assert_refused(await anonymous.get(old_expired))
    fresh = (await rest.get(f"/v1/files/{file['id']}", headers=_auth(token))).json()
    assert parse_qs(urlsplit(fresh["url"]).query)["kid"] == ["k2"]


def test_production_refuses_a_development_or_weak_url_signing_key() -> None:
    settings = FilesSettings(environment="production", file_url_previous_keys=SecretStr('{"old": "short"}'))
    problems = settings.insecurities()
    assert "STYLESTUDIO_FILE_URL_SIGNING_KEY is a development default" in problems
    assert f"STYLESTUDIO_FILE_URL_PREVIOUS_KEYS[old] is shorter than {MIN_SECRET_BYTES} bytes" in problems
    strong = FilesSettings(environment="production", file_url_signing_key=SecretStr("k" * MIN_SECRET_BYTES))
    assert not [problem for problem in strong.insecurities() if "FILE_URL" in problem]
    for malformed in ("not json", '["a list"]', '{"k": 1}'):
        with pytest.raises(pydantic.ValidationError):
            FilesSettings(file_url_previous_keys=SecretStr(malformed))
