"""The rules that judge bytes and names, without a network."""

from __future__ import annotations

import pytest

from kit.errors import FileTooLarge, InvalidFileType, ValidationError
from services.files.images import inspect_image
from services.files.uploads import sanitise_filename
from tests.files.samples import decompression_bomb, image_bytes

MAX_PIXELS = 50_000_000


@pytest.mark.parametrize(
    ("pil_format", "fmt", "content_type"),
    [
        ("JPEG", "jpeg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("WEBP", "webp", "image/webp"),
    ],
)
def test_accepted_formats_are_read_from_the_bytes(pil_format: str, fmt: str, content_type: str) -> None:
    facts = inspect_image(image_bytes(pil_format, (31, 17)), MAX_PIXELS)
    assert (facts.format, facts.content_type, facts.width, facts.height) == (fmt, content_type, 31, 17)


@pytest.mark.parametrize(
    "content",
    [
        b"just some text\n",
        b"<html><body><img src=x onerror=alert(1)></body></html>",
        image_bytes("GIF"),
        image_bytes("BMP"),
    ],
)
def test_anything_else_is_an_invalid_file_type(content: bytes) -> None:
    with pytest.raises(InvalidFileType):
        inspect_image(content, MAX_PIXELS)


def test_a_truncated_jpeg_is_refused() -> None:
    content = image_bytes("JPEG", (200, 200), color="red")
    with pytest.raises(ValidationError):
        inspect_image(content[: len(content) // 2], MAX_PIXELS)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(FileTooLarge) as refused:
        inspect_image(decompression_bomb(), MAX_PIXELS)
    assert refused.value.details["max_pixels"] == str(MAX_PIXELS)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ann\\Desktop\\dress.png", "dress.png"),
        ("evil\x00name\r\n.jpg", "evilname.jpg"),
        ("bidi\u202egnp.jpg", "bidignp.jpg"),
        ("...", ""),
        ("/", ""),
    ],
)
def test_filenames_lose_paths_and_control_characters(given: str, expected: str) -> None:
    assert sanitise_filename(given, 255) == expected


def test_long_filenames_are_shortened_keeping_the_extension() -> None:
    name = sanitise_filename("a" * 300 + ".jpeg", 255)
    assert len(name) == 255 and name.endswith(".jpeg")
