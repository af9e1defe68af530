"""An upload cut off by the files service dying: its quota reservation is given back."""

from __future__ import annotations

import asyncio
import os
import time

from stylestudio.files.v1 import files_pb2
from tests.files.conftest import FilesDatabase
from tests.harness import Platform


async def _restart_files(platform: Platform) -> None:
    platform.processes["files"].kill()
    platform.processes["files"].wait()
    platform.start("files")
    await platform.wait_serving("files")


async def test_the_reservation_of_an_upload_cut_off_by_a_crash_is_given_back(
    new_user, files_platform: Platform, files_database: FilesDatabase
) -> None:
    user = new_user(plan="basic")
    call = user.stub.UploadFile(metadata=user.metadata)
    metadata = files_pb2.UploadFileMetadata(filename="cut.jpg", category="product_image")
    await call.write(files_pb2.UploadFileRequest(metadata=metadata))
    await call.write(files_pb2.UploadFileRequest(chunk=os.urandom(200 * 1024)))  # past a reservation step
    deadline = time.monotonic() + 10
    while files_database.reserved_bytes(user.user_id) == 0:
        assert time.monotonic() < deadline, "the upload never reserved quota"
        await asyncio.sleep(0.05)
    assert files_database.reservations(user.user_id) == 1

    # The service dies mid-upload; it comes back with a short reservation lifetime
    # (production keeps a silent upload's reservation for five minutes).
    files_platform._extra_env["STYLESTUDIO_RESERVATION_TTL_SECONDS"] = "1"
    try:
        await _restart_files(files_platform)
        call.cancel()
        deadline = time.monotonic() + 15
        while files_database.reserved_bytes(user.user_id) or files_database.reservations(user.user_id):
            assert time.monotonic() < deadline, "the janitor never gave the reservation back"
            await asyncio.sleep(0.1)
        assert files_database.file_rows(user.user_id) == 0
        assert files_database.used_bytes(user.user_id) == 0
    finally:
        del files_platform._extra_env["STYLESTUDIO_RESERVATION_TTL_SECONDS"]
        await _restart_files(files_platform)
