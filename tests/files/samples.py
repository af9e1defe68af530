"""Test images made on the fly: real encoders, so the service sees what cameras and browsers send."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from services.files.images import prepare_image

GPS_IFD = 0x8825


def image_bytes(
    fmt: str, size: tuple[int, int] = (64, 48), *, gps: bool = False, color: str = "teal"
) -> bytes:
    image = Image.new("RGB", size, color)
    out = io.BytesIO()
    options: dict[str, object] = {}
    if gps:
        exif = Image.Exif()
        exif[0x010F] = "TestCam"  # Make: must survive stripping
        location = exif.get_ifd(GPS_IFD)
        location[1], location[2] = "N", (48.0, 51.0, 24.0)
        location[3], location[4] = "E", (2.0, 21.0, 3.0)
        options["exif"] = exif
    image.save(out, fmt, **options)
    return out.getvalue()


def noisy_jpeg(size: tuple[int, int]) -> bytes:
    """A JPEG that compresses badly, to reach a given byte size with few pixels."""
    import os

    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress, and that the service stores unchanged (its own encoding)."""
    import os

    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def decompression_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge bitmap."""
    small = image_bytes("PNG", (1, 1))
    ihdr_start = 8
    length = struct.unpack(">I", small[ihdr_start : ihdr_start + 4])[0]
    data = bytearray(small[ihdr_start + 8 : ihdr_start + 8 + length])
    data[0:8] = struct.pack(">II", width, height)
    chunk = b"IHDR" + bytes(data)
    patched = struct.pack(">I", length) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return small[:ihdr_start] + patched + small[ihdr_start + 12 + length :]


def location_of(content: bytes) -> dict[int, object]:
    with Image.open(io.BytesIO(content)) as image:
        return dict(image.getexif().get_ifd(GPS_IFD))


def make_of(content: bytes) -> object:
    with Image.open(io.BytesIO(content)) as image:
        return image.getexif().get(0x010F)


def stored_form(content: bytes) -> bytes:
    """What the service stores for ``content``: Pillow's re-encoding without location (deterministic)."""
    return prepare_image(content, 50_000_000)[1]
