"""What an upload really is, judged from its bytes with Pillow: format, dimensions, integrity.

The declared content type and the file name are never trusted: only JPEG, PNG and WebP
are accepted, images whose pixel count could exhaust memory when decoded are refused
before decoding, and the image is fully decoded so truncated or corrupt files fail here
rather than in a user's browser or the generation worker.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from kit.errors import FileTooLarge, InvalidFileType, ValidationError
from services.files.location import strip_location

# Pillow format name -> (our format name, content type).
ACCEPTED_FORMATS = {
    "JPEG": ("jpeg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
}
# What Pillow may call an accepted file: a JPEG with secondary images (phones' depth maps,
# MPF) opens as MPO; it is stored as a plain JPEG of its primary image.
PILLOW_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}


@dataclass(frozen=True, slots=True)
class ImageFacts:
    format: str
    content_type: str
    width: int
    height: int


def inspect_image(content: bytes, max_pixels: int) -> ImageFacts:
    """The image's facts, or the domain error saying why these bytes are not an acceptable image."""
    with _decoded(content, max_pixels) as (_, facts):
        return facts


def prepare_image(content: bytes, max_pixels: int) -> tuple[ImageFacts, bytes]:
    """The image's facts and the bytes to store: a new file of it with no location data."""
    with _decoded(content, max_pixels) as (image, facts):
        return facts, strip_location(image, facts.format, content)


@contextmanager
def _decoded(content: bytes, max_pixels: int) -> Iterator[tuple[Image.Image, ImageFacts]]:
    with warnings.catch_warnings():
        # Pillow's own bomb check only warns below twice its limit; ours decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(content), formats=list(ACCEPTED_FORMATS))
        except Image.DecompressionBombError as error:
            raise _bomb(0, 0, max_pixels) from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InvalidFileType(
                "Only JPEG, PNG and WebP images are accepted",
                details={"accepted": "image/jpeg, image/png, image/webp"},
            ) from error
        with image:
            width, height = image.size
            if width <= 0 or height <= 0 or width * height > max_pixels:
                raise _bomb(width, height, max_pixels)
            try:
                image.load()
            except Image.DecompressionBombError as error:
                raise _bomb(width, height, max_pixels) from error
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as error:
                # Pillow reports truncation and corruption with these; the bytes are unusable.
                raise ValidationError(
                    "The image is truncated or corrupt and cannot be decoded", field="file"
                ) from error
            fmt, content_type = ACCEPTED_FORMATS[PILLOW_FORMATS[str(image.format)]]
            yield image, ImageFacts(format=fmt, content_type=content_type, width=width, height=height)


def content_type_of(fmt: str) -> str:
    """The content type a stored file is served with: from its validated format, nothing else."""
    return {ours: content_type for ours, content_type in ACCEPTED_FORMATS.values()}.get(
        fmt, "application/octet-stream"
    )


def _bomb(width: int, height: int, max_pixels: int) -> FileTooLarge:
    return FileTooLarge(
        "The image has too many pixels to be processed safely",
        details={"width": width, "height": height, "max_pixels": max_pixels},
    )


def thumbnail_of(content: bytes, fmt: str, max_pixels: int) -> bytes:
    """A small rendition of a stored (already validated) image, at most ``max_pixels`` on its
    long side, in the same format: transparency stays, and the content type is the file's."""
    with Image.open(io.BytesIO(content)) as opened:
        opened.thumbnail((max_pixels, max_pixels), Image.Resampling.LANCZOS)
        image: Image.Image = opened
        if fmt == "jpeg" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        out = io.BytesIO()
        quality = {"jpeg": {"quality": 85}, "webp": {"quality": 80}}.get(fmt, {})
        image.save(out, format=fmt.upper(), **quality)
        return out.getvalue()
