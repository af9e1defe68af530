"""Removing location data from a stored copy, without re-encoding the pixels.

Cameras and phones write where a photo was taken into EXIF (the GPS IFD) and sometimes
into XMP. Both are personal data we must not keep or serve. The image data itself is
left untouched: the GPS IFD is dropped from the EXIF block, and XMP packets, which can
repeat the location, are dropped whole, by rewriting the container (JPEG segments, PNG
chunks, WebP RIFF chunks).
"""

from __future__ import annotations

import struct
import zlib

from PIL import Image

GPS_IFD = 0x8825
EXIF_PREFIX = b"Exif\x00\x00"
XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXTENDED_JPEG_PREFIX = b"http://ns.adobe.com/xmp/extension/\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}
# Text chunks that carry XMP or raw EXIF/APP1 profiles (ImageMagick writes "Raw profile type exif").
PNG_METADATA_KEYWORDS = (b"XML:com.adobe.xmp", b"Raw profile type")
WEBP_XMP_FLAG = 0x04
WEBP_EXIF_FLAG = 0x08


def strip_location(content: bytes, fmt: str) -> bytes:
    """``content`` without location metadata; the very same bytes when there was none."""
    if fmt == "jpeg":
        return _strip_jpeg(content)
    if fmt == "png":
        return _strip_png(content)
    if fmt == "webp":
        return _strip_webp(content)
    return content


def _exif_without_gps(block: bytes) -> bytes | None:
    """The EXIF block re-serialised without its GPS IFD; None when it had none; b"" to drop it.

    An EXIF block Pillow cannot parse might still hold a location, so it is dropped whole.
    """
    prefixed = block.startswith(EXIF_PREFIX)
    exif = Image.Exif()
    try:
        exif.load(block)
    except (OSError, SyntaxError, ValueError, KeyError, IndexError, struct.error):
        return b""
    if GPS_IFD not in exif:
        return None
    del exif[GPS_IFD]
    cleaned = exif.tobytes()
    return cleaned if prefixed else cleaned.removeprefix(EXIF_PREFIX)


def _strip_jpeg(content: bytes) -> bytes:
    out, position, changed = bytearray(content[:2]), 2, False
    while position + 4 <= len(content) and content[position] == 0xFF:
        marker = content[position + 1]
        if marker == 0xFF:  # fill byte
            out.append(0xFF)
            position += 1
            continue
        if marker == 0xDA or 0xD0 <= marker <= 0xD9 or marker == 0x01:
            break  # start of scan (or a marker without a length): the rest is image data
        length = struct.unpack(">H", content[position + 2 : position + 4])[0]
        segment_end = position + 2 + length
        payload = content[position + 4 : segment_end]
        if marker == 0xE1 and payload.startswith((XMP_JPEG_PREFIX, XMP_EXTENDED_JPEG_PREFIX)):
            changed = True
        elif marker == 0xE1 and payload.startswith(EXIF_PREFIX):
            cleaned = _exif_without_gps(payload)
            if cleaned is not None and len(cleaned) + 2 <= 0xFFFF:
                if cleaned:
                    out += b"\xff\xe1" + struct.pack(">H", len(cleaned) + 2) + cleaned
                changed = True
            else:
                out += content[position:segment_end]
        else:
            out += content[position:segment_end]
        position = segment_end
    if not changed:
        return content
    return bytes(out + content[position:])


def _strip_png(content: bytes) -> bytes:
    out, position, changed = bytearray(PNG_SIGNATURE), len(PNG_SIGNATURE), False
    while position + 12 <= len(content):
        length, kind = struct.unpack(">I4s", content[position : position + 8])
        chunk_end = position + 12 + length
        data = content[position + 8 : position + 8 + length]
        if kind in PNG_TEXT_CHUNKS and data.split(b"\x00", 1)[0].startswith(PNG_METADATA_KEYWORDS):
            changed = True
        elif kind == b"eXIf" and (cleaned := _exif_without_gps(data)) is not None:
            if cleaned:
                out += struct.pack(">I", len(cleaned)) + kind + cleaned
                out += struct.pack(">I", zlib.crc32(kind + cleaned) & 0xFFFFFFFF)
            changed = True
        else:
            out += content[position:chunk_end]
        position = chunk_end
        if kind == b"IEND":
            break
    return bytes(out) if changed else content


def _strip_webp(content: bytes) -> bytes:
    if content[:4] != b"RIFF" or content[8:12] != b"WEBP":
        return content
    chunks: list[tuple[bytes, bytes]] = []
    position, changed, cleared_flags = 12, False, 0
    while position + 8 <= len(content):
        kind, size = struct.unpack("<4sI", content[position : position + 8])
        data = content[position + 8 : position + 8 + size]
        position += 8 + size + (size & 1)
        if kind == b"XMP ":
            changed, cleared_flags = True, cleared_flags | WEBP_XMP_FLAG
            continue
        if kind == b"EXIF" and (cleaned := _exif_without_gps(data)) is not None:
            data, changed = cleaned, True
            if not data:
                cleared_flags |= WEBP_EXIF_FLAG
                continue
        chunks.append((kind, data))
    if not changed:
        return content
    body = bytearray(b"WEBP")
    for kind, data in chunks:
        if kind == b"VP8X" and cleared_flags:
            data = bytes([data[0] & ~cleared_flags]) + data[1:]
        body += kind + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + bytes(body)
