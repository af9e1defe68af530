"""Ownership, listing, usage, delete with background purge, and the pins of running generations."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from kit.errors import Reason
from stylestudio.files.v1 import files_pb2
from tests.files.conftest import FilesDatabase, domain_error_of, stored_files
from tests.files.samples import image_bytes


async def _eventually(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_another_users_file_cannot_be_read_downloaded_deleted_or_used(new_user, internal, service_auth):
    owner, other = new_user(), new_user()
    file = await owner.upload(image_bytes("JPEG"))
    for call in (
        other.stub.GetFile(files_pb2.GetFileRequest(id=file.id), metadata=other.metadata),
        other.download(file.id),
        other.stub.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=other.metadata),
        internal.ReadFileContent(
            files_pb2.ReadFileContentRequest(user_id=other.user_id, file_id=file.id), metadata=service_auth
        ).read(),
        internal.AcquireFileReferences(
            files_pb2.AcquireFileReferencesRequest(
                user_id=other.user_id, generation_id=str(uuid.uuid4()), file_ids=[file.id]
            )
        ),
    ):
        assert (await domain_error_of(call)).reason == Reason.NOT_FOUND
    checked = await internal.CheckFileOwnership(
        files_pb2.CheckFileOwnershipRequest(user_id=other.user_id, file_ids=[file.id])
    )
    assert (list(checked.owned_ids), list(checked.missing_ids)) == ([], [file.id])
    # ...and the owner still has it.
    assert (
        await owner.stub.GetFile(files_pb2.GetFileRequest(id=file.id), metadata=owner.metadata)
    ).id == file.id


async def test_ownership_of_a_list_is_checked_in_one_call(new_user, internal):
    user = new_user()
    mine = [(await user.upload(image_bytes("PNG"))).id for _ in range(2)]
    unknown, garbage = str(uuid.uuid4()), "not-a-uuid"
    checked = await internal.CheckFileOwnership(
        files_pb2.CheckFileOwnershipRequest(
            user_id=user.user_id, file_ids=[mine[0], unknown, mine[1], garbage]
        )
    )
    assert list(checked.owned_ids) == mine
    assert list(checked.missing_ids) == [unknown, garbage]


async def test_ids_that_are_not_uuids_are_not_found(new_user):
    user = new_user()
    error = await domain_error_of(
        user.stub.GetFile(files_pb2.GetFileRequest(id="../etc"), metadata=user.metadata)
    )
    assert error.reason == Reason.NOT_FOUND


async def test_listing_is_paged_newest_first_and_filtered_by_category(new_user):
    user = new_user()
    products = [(await user.upload(image_bytes("PNG"), category="product_image")).id for _ in range(5)]
    avatar = (await user.upload(image_bytes("PNG"), category="avatar")).id
    seen, token = [], ""
    while True:
        page = await user.stub.ListFiles(
            files_pb2.ListFilesRequest(category="product_image", page_size=2, page_token=token),
            metadata=user.metadata,
        )
        assert len(page.files) <= 2
        seen += [f.id for f in page.files]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(products))
    everything = await user.stub.ListFiles(files_pb2.ListFilesRequest(), metadata=user.metadata)
    assert everything.files[0].id == avatar and len(everything.files) == 6

    bad = await domain_error_of(
        user.stub.ListFiles(files_pb2.ListFilesRequest(page_token="garbage!"), metadata=user.metadata)
    )
    assert (bad.reason, bad.details["field"]) == (Reason.VALIDATION_ERROR, "pageToken")


async def test_usage_is_counted_by_category_against_the_plan_quota(new_user, internal):
    user = new_user(plan="pro")
    product = await user.upload(image_bytes("PNG", (50, 50)), category="product_image")
    model = await user.upload(image_bytes("JPEG", (70, 30)), category="model_image")
    usage = await user.stub.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=user.metadata)
    assert usage.total_bytes == product.size + model.size and usage.file_count == 2
    assert usage.quota_bytes == 10 * 1024**3
    assert usage.by_category["product_image"].total_bytes == product.size
    assert usage.by_category["model_image"].file_count == 1
    assert "avatar" not in usage.by_category
    summary = await internal.GetStorageSummary(files_pb2.GetStorageSummaryRequest(user_id=user.user_id))
    assert summary == usage


async def test_delete_hides_the_file_at_once_and_purges_its_bytes_in_the_background(
    new_user, files_database: FilesDatabase, files_root: Path
):
    user = new_user()
    before = stored_files(files_root)
    file = await user.upload(image_bytes("JPEG"))
    assert len(stored_files(files_root) - before) == 1
    await user.stub.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=user.metadata)
    error = await domain_error_of(
        user.stub.GetFile(files_pb2.GetFileRequest(id=file.id), metadata=user.metadata)
    )
    assert error.reason == Reason.NOT_FOUND
    usage = await user.stub.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=user.metadata)
    assert (usage.total_bytes, usage.file_count) == (0, 0)
    assert files_database.used_bytes(user.user_id) == 0
    await _eventually(lambda: not stored_files(files_root) - before)
    again = await domain_error_of(
        user.stub.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=user.metadata)
    )
    assert again.reason == Reason.NOT_FOUND


async def test_a_file_pinned_by_a_running_generation_is_neither_deleted_nor_purged(
    new_user, internal, service_auth, files_root: Path
):
    user = new_user()
    file = await user.upload(image_bytes("PNG"))
    generation_id = str(uuid.uuid4())
    pin = files_pb2.AcquireFileReferencesRequest(
        user_id=user.user_id, generation_id=generation_id, file_ids=[file.id]
    )
    await internal.AcquireFileReferences(pin)
    await internal.AcquireFileReferences(pin)  # idempotent
    delete = files_pb2.DeleteFileRequest(id=file.id)
    refused = await domain_error_of(user.stub.DeleteFile(delete, metadata=user.metadata))
    assert refused.reason == Reason.CONFLICT

    # The worker can still read it.
    stream = internal.ReadFileContent(
        files_pb2.ReadFileContentRequest(user_id=user.user_id, file_id=file.id), metadata=service_auth
    )
    parts = [part async for part in stream]
    assert parts[0].file.id == file.id
    assert b"".join(p.chunk for p in parts[1:]) == (await user.download(file.id))[1]

    await internal.ReleaseFileReferences(files_pb2.ReleaseFileReferencesRequest(generation_id=generation_id))
    await internal.ReleaseFileReferences(files_pb2.ReleaseFileReferencesRequest(generation_id=generation_id))
    await user.stub.DeleteFile(delete, metadata=user.metadata)
    gone = await domain_error_of(internal.AcquireFileReferences(pin))
    assert gone.reason == Reason.NOT_FOUND


async def test_internal_rpcs_refuse_users(new_user):
    user = new_user()
    error = await domain_error_of(
        user.stub.CheckFileOwnership(
            files_pb2.CheckFileOwnershipRequest(user_id=user.user_id, file_ids=[]), metadata=user.metadata
        )
    )
    assert error.reason == Reason.FORBIDDEN
