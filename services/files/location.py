"""Storing an image without its location: a new file written by Pillow, never a copy.

Cameras and phones write where a photo was taken into EXIF (the GPS IFD), XMP
(``exif:GPSLatitude``), IPTC (city, sub-location) and free-form PNG text chunks; a crafted
file can hide them where a hand-written segment walker stops but a reader goes on (a stray
byte before APP1, a second APP1, a secondary MPO image, data after the end of the image).
So nothing of the uploaded container is kept: the stored file is encoded by Pillow from
the decoded image, and carries only what is passed to it here:

- EXIF, re-serialised by Pillow without the GPS IFD and without the tags that can embed
  another metadata block (XMP, IPTC, Photoshop resources) or opaque vendor data (MakerNote,
  whose offsets a rewrite would break anyway);
- the ICC colour profile, the resolution (dpi), PNG transparency, JPEG progressive coding;
- nothing else: no XMP, no IPTC, no comments, no text chunks, no trailing bytes.

Pixels: PNG is lossless; JPEG is re-encoded with the original's quantisation tables and
chroma subsampling (``quality="keep"``), which changes values by a fraction of a level
(mean difference under 0.1/255 on a 12-megapixel photo); WebP is re-encoded losslessly when
the upload was lossless, else at ``WEBP_QUALITY``; an MPO (a JPEG with secondary images)
keeps its primary image only, at ``JPEG_QUALITY``. The price of a rewrite every time, rather
than only when location is found, is that nothing a reader might find in the original
container can survive because this code did not know where to look.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import ExifTags, Image

from kit.errors import ValidationError

# EXIF tags dropped with the GPS IFD: each can carry a whole other metadata block.
DROPPED_EXIF_TAGS = (
    ExifTags.IFD.GPSInfo,
    0x02BC,  # XMLPacket: XMP inside EXIF
    0x83BB,  # IPTC-NAA: IPTC (city, location names) inside EXIF
    0x8649,  # ImageResources: Photoshop resources, which hold IPTC too
)
MAKER_NOTE = 0x927C
# JPEGs whose tables Pillow cannot reuse (MPO) are re-encoded at this quality.
JPEG_QUALITY = 95
# WebP uploads that were lossy are re-encoded at this quality (Pillow's default is 80).
WEBP_QUALITY = 90


def strip_location(image: Image.Image, fmt: str, content: bytes) -> bytes:
    """A new file of ``image`` (decoded from ``content``) with no location data in it."""
    options: dict[str, Any] = {"exif": _exif_without_location(image)}
    if icc := image.info.get("icc_profile"):
        options["icc_profile"] = icc
    if dpi := image.info.get("dpi"):
        options["dpi"] = dpi
    if fmt == "jpeg":
        options["progressive"] = bool(image.info.get("progressive"))
        if image.format == "JPEG":
            options.update(quality="keep", subsampling="keep")
        else:  # MPO (Pillow keeps tables for plain JPEGs only): its primary image, at high quality
            options["quality"] = JPEG_QUALITY
    elif fmt == "png":
        if "transparency" in image.info:
            options["transparency"] = image.info["transparency"]
        options["save_all"] = getattr(image, "n_frames", 1) > 1  # APNG keeps its frames
    elif fmt == "webp":
        lossless = b"VP8L" in content[12:] and b"VP8 " not in content[12:]
        options.update(lossless=lossless, quality=100 if lossless else WEBP_QUALITY, exact=True)
        options["save_all"] = getattr(image, "n_frames", 1) > 1
    out = io.BytesIO()
    try:
        image.save(out, fmt.upper(), **options)
    except (OSError, ValueError, SyntaxError) as error:  # an image Pillow decoded but cannot write back
        raise ValidationError("The image cannot be stored in its format", field="file") from error
    return out.getvalue()


def _exif_without_location(image: Image.Image) -> bytes:
    exif = image.getexif()
    for tag in DROPPED_EXIF_TAGS:
        exif.pop(tag, None)
    if ExifTags.IFD.Exif in exif:
        exif.get_ifd(ExifTags.IFD.Exif).pop(MAKER_NOTE, None)
    return exif.tobytes() if len(exif) else b""
