"""Per-plan quotas, reserved in PostgreSQL before bytes are accepted: exact under concurrency.

The package's platform gives the "basic" plan a 300 KiB quota (see conftest.FILES_ENV). The
images are PNGs Pillow wrote, which the service's own re-encoding stores byte for byte, so sizes
uploaded are sizes stored.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from kit.errors import Reason
from stylestudio.files.v1 import files_pb2
from tests.files.conftest import BASIC_QUOTA_BYTES, FilesDatabase, domain_error_of, stored_files
from tests.files.samples import image_bytes, noisy_png


def filler_leaving_room_for(room: int) -> bytes:
    """A random PNG whose whole copies leave at least `room` bytes of the quota free (its size varies)."""
    while True:
        content = noisy_png((100, 100))
        if BASIC_QUOTA_BYTES % len(content) >= room:
            return content


async def test_the_upload_that_would_exceed_the_quota_is_refused(
    new_user, files_database: FilesDatabase, files_root: Path
):
    user = new_user(plan="basic")
    small = image_bytes("PNG", (2, 2))
    content = filler_leaving_room_for(len(small))
    fits = BASIC_QUOTA_BYTES // len(content)
    for _ in range(fits):
        await user.upload(content)
    before = stored_files(files_root)
    error = await domain_error_of(user.upload(content))
    assert (error.reason, error.code) == (Reason.QUOTA_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert error.details["quota_bytes"] == str(BASIC_QUOTA_BYTES)
    # Only what this upload added counts: the janitor may purge other tests' deleted files meanwhile.
    assert stored_files(files_root) - before == set()
    assert files_database.file_rows(user.user_id) == fits
    assert files_database.reserved_bytes(user.user_id) == 0
    usage = await user.stub.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=user.metadata)
    assert (usage.total_bytes, usage.quota_bytes) == (fits * len(content), BASIC_QUOTA_BYTES)

    # A smaller file that still fits in what is left is accepted: the check is exact, not by steps.
    left = BASIC_QUOTA_BYTES - usage.total_bytes
    assert len(small) <= left < len(content)
    await user.upload(small)


async def test_usage_stays_exact_under_concurrent_uploads(new_user, files_database: FilesDatabase):
    user = new_user(plan="basic")
    content = noisy_png((80, 75))
    attempts = BASIC_QUOTA_BYTES // len(content) + 4
    results = await asyncio.gather(*(user.upload(content) for _ in range(attempts)), return_exceptions=True)
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(accepted) + len(refused) == attempts
    assert len(accepted) == BASIC_QUOTA_BYTES // len(content)
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert files_database.used_bytes(user.user_id) == len(accepted) * len(content) <= BASIC_QUOTA_BYTES
    assert files_database.reserved_bytes(user.user_id) == 0
    assert files_database.reservations(user.user_id) == 0
    assert files_database.file_rows(user.user_id) == len(accepted)


async def test_deleting_frees_quota_at_once(new_user):
    user = new_user(plan="basic")
    content = noisy_png((100, 100))
    files = [await user.upload(content) for _ in range(BASIC_QUOTA_BYTES // len(content))]
    assert (await domain_error_of(user.upload(content))).reason == Reason.QUOTA_EXCEEDED
    await user.stub.DeleteFile(files_pb2.DeleteFileRequest(id=files[0].id), metadata=user.metadata)
    await user.upload(content)
