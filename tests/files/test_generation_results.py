"""Storing a generation's results: validated, ordered, first one primary, exactly once."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import grpc
import psycopg

from kit.errors import Reason
from stylestudio.files.v1 import files_pb2
from tests.files.conftest import FilesDatabase, domain_error_of
from tests.files.samples import image_bytes


def _results(user_id: str, generation_id: str, count: int = 3) -> files_pb2.StoreGenerationResultsRequest:
    images = [
        files_pb2.GeneratedImage(content=image_bytes("PNG", (32 + i, 32)), content_type="image/png")
        for i in range(count)
    ]
    return files_pb2.StoreGenerationResultsRequest(
        user_id=user_id, generation_id=generation_id, images=images
    )


async def test_results_are_stored_in_order_with_the_first_primary(new_user, internal):
    user = new_user()
    generation_id = str(uuid.uuid4())
    stored = await internal.StoreGenerationResults(_results(user.user_id, generation_id))
    assert [f.image_order for f in stored.files] == [0, 1, 2]
    assert [f.is_primary for f in stored.files] == [True, False, False]
    assert [f.width for f in stored.files] == [32, 33, 34]
    assert {f.category for f in stored.files} == {"generated_image"}
    assert stored.files[1].filename == f"{generation_id}-1.png"
    shown = await user.stub.GetFile(files_pb2.GetFileRequest(id=stored.files[0].id), metadata=user.metadata)
    assert (shown.generation_id, shown.is_primary) == (generation_id, True)
    listed = await user.stub.ListFiles(
        files_pb2.ListFilesRequest(category="generated_image"), metadata=user.metadata
    )
    assert len(listed.files) == 3


async def test_storing_the_same_generation_twice_yields_one_set_of_files(
    new_user, internal, files_database: FilesDatabase
):
    user = new_user()
    generation_id = str(uuid.uuid4())
    first = await internal.StoreGenerationResults(_results(user.user_id, generation_id))
    again = await internal.StoreGenerationResults(_results(user.user_id, generation_id))
    assert [f.id for f in again.files] == [f.id for f in first.files]
    # Four retries of another generation racing each other: still one set.
    racing_id = str(uuid.uuid4())
    racing = await asyncio.gather(
        *(internal.StoreGenerationResults(_results(user.user_id, racing_id)) for _ in range(4))
    )
    assert len({tuple(f.id for f in r.files) for r in racing}) == 1
    assert files_database.file_rows(user.user_id) == 6
    usage = await internal.GetStorageSummary(files_pb2.GetStorageSummaryRequest(user_id=user.user_id))
    assert usage.file_count == 6 and usage.total_bytes == files_database.used_bytes(user.user_id)


async def test_invalid_result_images_are_refused_and_nothing_is_stored(new_user, internal, files_database):
    user = new_user()
    request = _results(user.user_id, str(uuid.uuid4()), count=2)
    request.images.append(files_pb2.GeneratedImage(content=b"<html>not an image</html>"))
    error = await domain_error_of(internal.StoreGenerationResults(request))
    assert error.reason == Reason.INVALID_FILE_TYPE
    assert files_database.file_rows(user.user_id) == 0


async def test_results_of_a_discarded_generation_are_refused(new_user, internal, files_database):
    """A worker's store that arrives after the generation's outcome discarded its results
    (canceled or failed meanwhile) stores nothing, and a retry of it neither."""
    user = new_user()
    generation_id = str(uuid.uuid4())
    discard = files_pb2.DiscardGenerationResultsRequest(user_id=user.user_id, generation_id=generation_id)
    await internal.DiscardGenerationResults(discard)
    for _ in range(2):
        error = await domain_error_of(internal.StoreGenerationResults(_results(user.user_id, generation_id)))
        assert error.code is grpc.StatusCode.FAILED_PRECONDITION
        assert error.details == {"generation_id": generation_id}
    await internal.DiscardGenerationResults(discard)  # idempotent
    assert files_database.file_rows(user.user_id) == 0
    usage = await internal.GetStorageSummary(files_pb2.GetStorageSummaryRequest(user_id=user.user_id))
    assert (usage.file_count, usage.total_bytes) == (0, 0)


async def test_a_store_racing_a_discard_never_leaves_results_behind(new_user, internal, files_database):
    """Stores and discards of the same generations at once: whichever wins, no result stays."""
    user = new_user()
    generation_ids = [str(uuid.uuid4()) for _ in range(40)]
    delays = random.Random(7)

    async def store(generation_id: str) -> None:
        try:
            await internal.StoreGenerationResults(_results(user.user_id, generation_id, count=1))
        except grpc.aio.AioRpcError as error:  # refused: the discard came first
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION

    async def discard(generation_id: str) -> None:
        await asyncio.sleep(delays.uniform(0, 0.2))  # lands anywhere in the store, or after it
        await internal.DiscardGenerationResults(
            files_pb2.DiscardGenerationResultsRequest(user_id=user.user_id, generation_id=generation_id)
        )

    await asyncio.gather(*(f(g) for g in generation_ids for f in (store, discard)))
    listed = await user.stub.ListFiles(
        files_pb2.ListFilesRequest(category="generated_image"), metadata=user.metadata
    )
    assert list(listed.files) == []
    usage = await internal.GetStorageSummary(files_pb2.GetStorageSummaryRequest(user_id=user.user_id))
    assert (usage.file_count, usage.total_bytes) == (0, 0)
    assert files_database.used_bytes(user.user_id) == 0


async def test_a_discarded_generation_is_forgotten_after_its_retention(new_user, internal, files_database):
    """The janitor drops discarded generations past the retention (a week by default): the
    table does not grow for ever, and a recent discard is kept."""
    user = new_user()
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    for generation_id in (old, recent):
        await internal.DiscardGenerationResults(
            files_pb2.DiscardGenerationResultsRequest(user_id=user.user_id, generation_id=generation_id)
        )
    with psycopg.connect(files_database.dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE files.discarded_generations SET discarded_at = now() - interval '8 days'"
            " WHERE generation_id = %s",
            (old,),
        )

    def remembered(generation_id: str) -> bool:
        query = "SELECT count(*) FROM files.discarded_generations WHERE generation_id = %s"
        return files_database.scalar(query, generation_id) == 1

    deadline = time.monotonic() + 10
    while remembered(old):
        assert time.monotonic() < deadline, "the janitor kept a discarded generation past its retention"
        await asyncio.sleep(0.1)
    assert remembered(recent)
    error = await domain_error_of(internal.StoreGenerationResults(_results(user.user_id, recent)))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
