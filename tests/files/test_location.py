"""Location data never survives an upload, whatever the container's layout (services/files/location.py).

Each layout is built here with real encoders plus the byte surgery an attacker (or an odd
camera) would do; the stored file is then checked with Pillow: no GPS in its EXIF, no XMP,
no text chunk, none of the marker strings placed in the location fields anywhere in its
bytes, and still a valid image of the same size.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageChops, ImageStat, PngImagePlugin

from services.files.images import inspect_image, prepare_image
from tests.files.samples import GPS_IFD, location_of, make_of

MAX_PIXELS = 50_000_000
SECRET = "SECRETPLACE"  # written into every location field; must appear nowhere afterwards
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.4N" '
    f'exif:GPSLongitude="2,21.05E" exif:GPSAreaInformation="{SECRET}"/></rdf:RDF></x:xmpmeta>'
).encode()


def picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    image = Image.new("RGB", size, "teal")
    image.paste((200, 30, 60), (5, 5, 30, 20))
    return image


def gps_exif(make: str = "TestCam") -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = make
    location = exif.get_ifd(GPS_IFD)
    location[1], location[2] = "N", (48.0, 51.0, 24.0)
    location[3], location[4] = "E", (2.0, 21.0, 3.0)
    location[0x12] = SECRET  # GPSMapDatum
    return exif


def encoded(fmt: str, image: Image.Image | None = None, /, **options: object) -> bytes:
    out = io.BytesIO()
    (image or picture()).save(out, fmt, **options)
    return out.getvalue()


def app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def before_iend(png: bytes, *chunks: bytes) -> bytes:
    end = png.rindex(b"IEND") - 4
    return png[:end] + b"".join(chunks) + png[end:]


# --- the layouts ---


def jpeg_plain_exif() -> bytes:
    return encoded("JPEG", exif=gps_exif())


def after_app0(jpeg: bytes) -> int:
    """Where the segment after SOI and the JFIF APP0 starts."""
    assert jpeg[2:4] == b"\xff\xe0"
    return 4 + int(struct.unpack(">H", jpeg[4:6])[0])


def jpeg_stray_byte_before_app1() -> bytes:
    plain = encoded("JPEG")
    at = after_app0(plain)
    return plain[:at] + b"\x00" + app1(gps_exif().tobytes()) + plain[at:]  # tobytes: "Exif\0\0..."


def jpeg_stray_bytes_between_segments() -> bytes:
    plain = encoded("JPEG")
    at = after_app0(plain)
    return plain[:at] + app1(b"XMPjunk") + b"\x13\x37" + app1(gps_exif().tobytes()) + plain[at:]


def jpeg_two_app1_segments() -> bytes:
    harmless = Image.Exif()
    harmless[0x010F] = "TestCam"
    plain = encoded("JPEG")
    at = after_app0(plain)
    return plain[:at] + app1(harmless.tobytes()) + app1(gps_exif().tobytes()) + plain[at:]


def jpeg_xmp() -> bytes:
    return encoded("JPEG", exif=gps_exif(), xmp=XMP)


def jpeg_xmp_inside_exif() -> bytes:
    exif = gps_exif()
    exif[0x02BC] = XMP  # XMLPacket
    return encoded("JPEG", exif=exif)


def jpeg_with_a_located_jpeg_after_its_end() -> bytes:
    return encoded("JPEG") + jpeg_plain_exif()


def jpeg_mpo_second_image_located() -> bytes:
    second = picture()
    out = io.BytesIO()
    picture().save(out, "MPO", save_all=True, append_images=[second], exif=gps_exif())
    return out.getvalue()


def png_exif_chunk() -> bytes:
    return encoded("PNG", exif=gps_exif())


def png_text_chunks() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("GPSLatitude", f"48.857 {SECRET}")
    info.add_text("GPS Position", f"48 51 N {SECRET}", zip=True)
    info.add_itxt("Location", f"Paris {SECRET}")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    return encoded("PNG", exif=gps_exif(), pnginfo=info)


def png_raw_exif_profile_text() -> bytes:
    # ImageMagick's way: the EXIF block hex-encoded in a zTXt "Raw profile type exif".
    block = gps_exif().tobytes()
    text = f"\nexif\n{len(block)}\n{block.hex()}\n".encode()
    return before_iend(
        encoded("PNG"), png_chunk(b"zTXt", b"Raw profile type exif\x00\x00" + zlib.compress(text))
    )


def png_exif_after_the_image_data() -> bytes:
    return before_iend(encoded("PNG"), png_chunk(b"eXIf", gps_exif().tobytes()[6:]))


def png_html_after_iend() -> bytes:
    return encoded("PNG", exif=gps_exif()) + f"<html><body>{SECRET}</body></html>".encode()


def webp_exif_and_xmp() -> bytes:
    return encoded("WEBP", exif=gps_exif(), xmp=XMP)


def webp_lossless_exif() -> bytes:
    return encoded("WEBP", exif=gps_exif(), lossless=True)


LAYOUTS: dict[str, tuple[Callable[[], bytes], str]] = {
    "jpeg-exif": (jpeg_plain_exif, "jpeg"),
    "jpeg-stray-byte-before-app1": (jpeg_stray_byte_before_app1, "jpeg"),
    "jpeg-stray-bytes-between-segments": (jpeg_stray_bytes_between_segments, "jpeg"),
    "jpeg-two-app1": (jpeg_two_app1_segments, "jpeg"),
    "jpeg-xmp": (jpeg_xmp, "jpeg"),
    "jpeg-xmp-inside-exif": (jpeg_xmp_inside_exif, "jpeg"),
    "jpeg-located-jpeg-after-eoi": (jpeg_with_a_located_jpeg_after_its_end, "jpeg"),
    "jpeg-mpo": (jpeg_mpo_second_image_located, "jpeg"),
    "png-exif-chunk": (png_exif_chunk, "png"),
    "png-text-chunks": (png_text_chunks, "png"),
    "png-raw-profile-text": (png_raw_exif_profile_text, "png"),
    "png-exif-after-idat": (png_exif_after_the_image_data, "png"),
    "png-html-after-iend": (png_html_after_iend, "png"),
    "webp-exif-xmp": (webp_exif_and_xmp, "webp"),
    "webp-lossless-exif": (webp_lossless_exif, "webp"),
}


def assert_no_location(stored: bytes) -> None:
    assert location_of(stored) == {}
    for marker in (SECRET.encode(), b"GPSLatitude", b"GPS Position", b"exif:GPS", b"xmpmeta", b"<html"):
        assert marker not in stored, marker
    with Image.open(io.BytesIO(stored)) as image:
        assert "xmp" not in image.info and "XML:com.adobe.xmp" not in image.info
        assert not {key for key in image.info if isinstance(key, str) and "GPS" in key}
        assert not getattr(image, "text", {})  # no PNG text chunk at all


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_no_location_survives_any_layout_and_the_image_stays_valid(layout: str) -> None:
    build, fmt = LAYOUTS[layout]
    content = build()
    assert (
        SECRET.encode() in content or b"exif:GPS" in content or location_of(content)
    )  # the layout is loaded
    facts, stored = prepare_image(content, MAX_PIXELS)
    assert facts.format == fmt
    assert_no_location(stored)
    again = inspect_image(stored, MAX_PIXELS)
    assert (again.format, again.width, again.height) == (fmt, 64, 48)


@pytest.mark.parametrize("layout", ["jpeg-stray-byte-before-app1", "png-exif-chunk", "webp-exif-xmp"])
def test_pillow_saw_the_location_that_was_removed(layout: str) -> None:
    """The layouts are real: Pillow (what the platform and most readers use) finds the GPS in them."""
    build, _ = LAYOUTS[layout]
    assert location_of(build())[2] == (48.0, 51.0, 24.0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_other_exif_is_kept(fmt: str) -> None:
    _, stored = prepare_image(encoded(fmt, exif=gps_exif()), MAX_PIXELS)
    assert make_of(stored) == "TestCam"


@pytest.mark.parametrize("options", [{}, {"exif": gps_exif()}])
def test_png_and_lossless_webp_keep_every_pixel(options: dict[str, object]) -> None:
    for fmt, extra in (("PNG", {}), ("WEBP", {"lossless": True})):
        content = encoded(fmt, **options, **extra)
        _, stored = prepare_image(content, MAX_PIXELS)
        with Image.open(io.BytesIO(content)) as before, Image.open(io.BytesIO(stored)) as after:
            assert ImageChops.difference(before.convert("RGB"), after.convert("RGB")).getbbox() is None


def test_a_jpeg_is_re_encoded_with_its_own_quantisation_tables() -> None:
    photo = Image.merge(
        "RGB", [Image.linear_gradient("L"), Image.radial_gradient("L"), Image.linear_gradient("L").rotate(90)]
    )
    content = encoded("JPEG", photo, quality=70, exif=gps_exif())
    _, stored = prepare_image(content, MAX_PIXELS)
    with Image.open(io.BytesIO(content)) as before, Image.open(io.BytesIO(stored)) as after:
        assert after.quantization == before.quantization  # type: ignore[attr-defined]
        difference = ImageStat.Stat(ImageChops.difference(before.convert("RGB"), after.convert("RGB")))
        assert max(difference.mean) < 1.0  # well under one level of 255 on average


def test_the_icc_profile_is_kept() -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt in ("JPEG", "PNG", "WEBP"):
        _, stored = prepare_image(encoded(fmt, icc_profile=profile, exif=gps_exif()), MAX_PIXELS)
        with Image.open(io.BytesIO(stored)) as image:
            assert image.info.get("icc_profile") == profile
