"""Uploads over gRPC: judged by content, nothing left behind when refused, location stripped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from kit.errors import Reason
from stylestudio.files.v1 import files_pb2
from tests.files.conftest import FilesDatabase, domain_error_of, stored_files, upload_stream
from tests.files.samples import decompression_bomb, image_bytes, location_of, make_of, stored_form

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("pil_format", "fmt", "content_type"),
    [("JPEG", "jpeg", "image/jpeg"), ("PNG", "png", "image/png"), ("WEBP", "webp", "image/webp")],
)
async def test_a_valid_image_is_stored_with_metadata_read_from_it(new_user, pil_format, fmt, content_type):
    user = new_user()
    content = image_bytes(pil_format, (120, 80))
    file = await user.upload(content, filename=f"look.{fmt}", category="model_image")
    assert (file.format, file.content_type, file.width, file.height) == (fmt, content_type, 120, 80)
    stored = stored_form(content)
    assert (file.filename, file.category, file.size) == (f"look.{fmt}", "model_image", len(stored))
    assert file.sha256 == hashlib.sha256(stored).hexdigest()
    assert file.created_at.seconds > 0

    served_type, body, headers = await user.download(file.id)
    assert (served_type, body) == (content_type, stored)
    assert headers["etag"] == f'"{file.sha256}"'
    assert "private" in headers["cache-control"]


async def test_a_png_named_jpg_and_declared_jpeg_is_stored_as_png(new_user):
    user = new_user()
    file = await user.upload(image_bytes("PNG"), filename="holiday.jpg", content_type="image/jpeg")
    assert (file.format, file.content_type) == ("png", "image/png")
    assert (await user.download(file.id))[0] == "image/png"


def _truncated_jpeg() -> bytes:
    content = image_bytes("JPEG", (300, 300), color="navy")
    return content[: len(content) * 2 // 3]


@pytest.mark.parametrize(
    ("content", "declared", "reason"),
    [
        (b"hello, this is plain text\n" * 20, "text/plain", Reason.INVALID_FILE_TYPE),
        (b"<!doctype html><html><script>alert(1)</script></html>", "image/png", Reason.INVALID_FILE_TYPE),
        (_truncated_jpeg(), "image/jpeg", Reason.VALIDATION_ERROR),
        (decompression_bomb(), "image/png", Reason.FILE_TOO_LARGE),
        (b"\xff\xd8\xff\xe0" + b"\x00" * (11 * MIB), "image/jpeg", Reason.FILE_TOO_LARGE),
    ],
    ids=["text", "html-as-image", "truncated-jpeg", "decompression-bomb", "11-mib"],
)
async def test_a_refused_upload_leaves_nothing_behind(
    new_user, files_database: FilesDatabase, files_root: Path, content, declared, reason
):
    user = new_user()
    before = stored_files(files_root)
    error = await domain_error_of(user.upload(content, filename="x.png", content_type=declared))
    assert error.reason == reason
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert files_database.file_rows(user.user_id) == 0
    assert files_database.reservations(user.user_id) == 0
    assert files_database.reserved_bytes(user.user_id) == 0
    assert files_database.used_bytes(user.user_id) == 0
    # Only what this upload added counts: the janitor may purge other tests' deleted files meanwhile.
    assert stored_files(files_root) - before == set()
    assert (
        await user.stub.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=user.metadata)
    ).file_count == 0


async def test_gps_exif_is_gone_from_the_stored_copy(new_user):
    user = new_user()
    original = image_bytes("JPEG", gps=True)
    assert location_of(original)
    file = await user.upload(original)
    _, stored, _ = await user.download(file.id)
    assert location_of(stored) == {}
    assert make_of(stored) == "TestCam"
    assert file.sha256 == hashlib.sha256(stored).hexdigest() and file.size == len(stored)


async def test_the_filename_is_sanitised(new_user):
    user = new_user()
    file = await user.upload(image_bytes("PNG"), filename="../../etc/\x00passwd\n.png")
    assert file.filename == "passwd.png"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"category": "generated_image"}, "category"),
        ({"category": "selfie"}, "category"),
        ({"filename": "/"}, "filename"),
    ],
)
async def test_bad_metadata_is_a_validation_error_with_the_field(new_user, fields, field):
    error = await domain_error_of(new_user().upload(image_bytes("PNG"), **fields))
    assert (error.reason, error.details.get("field")) == (Reason.VALIDATION_ERROR, field)


async def test_a_stream_without_metadata_first_is_refused(new_user):
    user = new_user()
    requests = list(upload_stream(image_bytes("PNG")))[1:]
    error = await domain_error_of(user.stub.UploadFile(iter(requests), metadata=user.metadata))
    assert (error.reason, error.details.get("field")) == (Reason.VALIDATION_ERROR, "metadata")


async def test_the_same_idempotency_key_returns_the_first_file(new_user, files_database: FilesDatabase):
    user = new_user()
    first = await user.upload(image_bytes("PNG"), idempotency_key="upload-1")
    again = await user.upload(image_bytes("PNG"), idempotency_key="upload-1")
    assert again.id == first.id and again.format == "png"
    assert files_database.file_rows(user.user_id) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"content": image_bytes("JPEG")},
        {"content": image_bytes("PNG"), "filename": "other.png"},
        {"content": image_bytes("PNG"), "category": "avatar"},
    ],
    ids=["other-bytes", "other-name", "other-category"],
)
async def test_the_same_idempotency_key_with_another_upload_is_a_conflict(
    new_user, files_database: FilesDatabase, other: dict[str, object]
):
    user = new_user()
    await user.upload(image_bytes("PNG"), idempotency_key="upload-2")
    fields = {name: str(value) for name, value in other.items() if name != "content"}
    content = other["content"]
    assert isinstance(content, bytes)
    error = await domain_error_of(user.upload(content, idempotency_key="upload-2", **fields))
    assert (error.reason, error.code) == (Reason.CONFLICT, grpc.StatusCode.ALREADY_EXISTS)
    assert files_database.file_rows(user.user_id) == 1


async def test_a_key_whose_file_was_deleted_is_a_conflict_not_a_second_file(new_user):
    user = new_user()
    first = await user.upload(image_bytes("PNG"), idempotency_key="upload-3")
    await user.stub.DeleteFile(files_pb2.DeleteFileRequest(id=first.id), metadata=user.metadata)
    error = await domain_error_of(user.upload(image_bytes("PNG"), idempotency_key="upload-3"))
    assert error.reason == Reason.CONFLICT


async def test_uploads_need_a_signed_in_user(user_files_channel):
    from stylestudio.files.v1 import files_pb2_grpc

    stub = files_pb2_grpc.FilesServiceStub(user_files_channel)
    error = await domain_error_of(stub.UploadFile(upload_stream(image_bytes("PNG"))))
    assert error.reason == Reason.UNAUTHORIZED
