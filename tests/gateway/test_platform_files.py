"""A 9 MiB image through the gateway and the real files service, pixel for pixel (the service
stores its own lossless re-encoding of a PNG); the byte-for-byte round trip through the echo
service is in test_streaming.py.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import httpx
from PIL import Image

from tests.harness import Platform

WIDTH, HEIGHT = 1774, 1773  # an uncompressed RGB PNG of about 9 MiB


def noise_png(width: int, height: int) -> bytes:
    """A valid PNG of random pixels, stored without compression (so it stays ~9 MiB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


async def test_nine_mib_image_round_trips_through_the_files_service(
    gateway: httpx.AsyncClient, platform: Platform
) -> None:
    image = noise_png(WIDTH, HEIGHT)
    assert 9 * 1024 * 1024 <= len(image) < 10 * 1024 * 1024
    _, token = platform.user_token()
    auth = {"Authorization": f"Bearer {token}"}
    response = await gateway.post(
        "/v1/files",
        data={"category": "product_image"},
        files={"file": ("noise.png", image, "image/png")},
        headers=auth,
    )
    assert response.status_code == 200, response.text
    stored = response.json()
    assert (stored["width"], stored["height"]) == (WIDTH, HEIGHT)
    async with gateway.stream("GET", f"/v1/files/{stored['id']}/content", headers=auth) as download:
        assert download.status_code == 200
        assert download.headers["content-type"] == "image/png"
        received = b"".join([chunk async for chunk in download.aiter_bytes()])
    # The service stores its own (lossless) re-encoding of a PNG: the same pixels, its own bytes.
    assert int(stored["size"]) == len(received)
    with Image.open(io.BytesIO(received)) as after, Image.open(io.BytesIO(image)) as before:
        assert after.tobytes() == before.tobytes()


async def test_a_files_links_are_absolute_on_the_gateway_and_serve_another_origin_without_a_token(
    gateway: httpx.AsyncClient, platform: Platform
) -> None:
    _, token = platform.user_token()
    image = noise_png(64, 48)
    response = await gateway.post(
        "/v1/files",
        data={"category": "product_image"},
        files={"file": ("small.png", image, "image/png")},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    stored = response.json()
    prefix = f"{platform.gateway_url}/v1/files/{stored['id']}/content:signed?"
    assert stored["url"].startswith(prefix) and stored["thumbnailUrl"].startswith(prefix), stored
    # What an <img src> on another origin does: the absolute URL as it is, no base, no token.
    async with httpx.AsyncClient(verify=platform.gateway_verify, timeout=30.0) as browser:
        full = await browser.get(stored["url"], headers={"Origin": "https://shop.example"})
        thumbnail = await browser.get(stored["thumbnailUrl"])
    assert (full.status_code, thumbnail.status_code) == (200, 200)
    with Image.open(io.BytesIO(full.content)) as served, Image.open(io.BytesIO(image)) as sent:
        assert served.tobytes() == sent.tobytes()
    assert thumbnail.headers["content-type"] == "image/png"
