"""Crash safety: the generation service SIGKILLed at each step of the saga, then restarted.

Every generation ends terminal, the ledger reconciles, nothing is charged twice and
no refund is lost. The prompt's ``[pause:STEP]`` directive stops the saga at a step
(once); the test sees the checkpoint's Redis key and kills the process there.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from redis.asyncio import Redis

from services.generation.faults import RESUME, checkpoint_key
from stylestudio.files.v1 import files_pb2
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc, resources_pb2
from tests.generation.conftest import Shopper
from tests.harness import Platform

# step -> the status the generation must end in
STEPS = {
    "after_hold": None,  # the start never reached QUEUED: no generation, hold released
    "after_processing": resources_pb2.COMPLETED,
    "before_store": resources_pb2.COMPLETED,
    "after_store": resources_pb2.COMPLETED,
    "after_decide": resources_pb2.COMPLETED,
    "after_billing": resources_pb2.COMPLETED,
}
# Steps before the outcome is decided, where the deadline may still win.
UNDECIDED_STEPS = {"after_processing", "before_store", "after_store"}
# A restart slower than this leaves too little of the deadline for the lease to lapse and the
# job to run again.
SLOW_RESTART_SECONDS = 8.0


async def _wait_for_checkpoint(
    platform: Platform, step: str, timeout: float = 20.0, generation_id: str = "*"
) -> None:
    if not await _reaches_checkpoint(platform, step, timeout, generation_id):
        raise AssertionError(f"the saga never reached {step}")


async def _reaches_checkpoint(
    platform: Platform, step: str, timeout: float, generation_id: str = "*"
) -> bool:
    redis = Redis.from_url(platform.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async for _ in redis.scan_iter(
                match=f"{platform.redis_prefix}:generation:checkpoint:{generation_id}:{step}"
            ):
                return True
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()
    return False


async def _resume(platform: Platform, generation_id: str, step: str) -> None:
    redis = Redis.from_url(platform.redis_url)
    try:
        await redis.set(checkpoint_key(platform.redis_prefix, generation_id, step), RESUME)
    finally:
        await redis.aclose()


async def _kill_and_restart(platform: Platform) -> None:
    platform.processes["generation"].kill()
    platform.processes["generation"].wait()
    platform.start("generation")
    await platform.wait_serving("generation")


@pytest.mark.parametrize("step", list(STEPS))
async def test_killed_at_each_step_the_saga_still_ends_right(gen_platform: Platform, step: str) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    start = asyncio.create_task(shopper.create([product], prompt=f"a bag [pause:{step}]"))
    if step != "after_hold":
        generation_id = (await start).id
    await _wait_for_checkpoint(gen_platform, step)
    restart_started = time.monotonic()
    await _kill_and_restart(gen_platform)
    restart_seconds = time.monotonic() - restart_started

    expected = STEPS[step]
    if expected is None:
        with pytest.raises(grpc.aio.AioRpcError):
            await start
        deadline = time.monotonic() + 20
        while (await shopper.balance()).reserved and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        listed = await shopper.generation.ListGenerations(
            generation_pb2.ListGenerationsRequest(), metadata=shopper.metadata
        )
        assert list(listed.generations) == []
        balance = await shopper.balance()
        assert (balance.balance, balance.reserved) == (5, 0)
        return
    done = await shopper.wait_terminal(generation_id, timeout=40)
    balance = await shopper.balance()
    if done.status == resources_pb2.FAILED and step in UNDECIDED_STEPS:
        # The sweeper re-sends the job once the dead worker's lease (3 s) lapses and the new
        # worker takes it, well within the 15 s deadline. Only a restart that itself took most of
        # that time (a machine far too loaded) may leave the deadline to win: it fails and refunds.
        assert restart_seconds > SLOW_RESTART_SECONDS, (restart_seconds, done.error)
        assert done.error.reason == "PROVIDER_UNAVAILABLE"
        assert (balance.balance, balance.reserved) == (5, 0)
        return
    assert done.status == expected, done.error
    assert len(done.result_image_files) == 1
    assert (balance.balance, balance.reserved) == (4, 0)  # charged exactly once


async def test_a_cancel_while_results_are_stored_leaves_no_images_behind(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a hat [pause:after_store]")
    # The images are stored, the outcome not decided yet.
    await _wait_for_checkpoint(gen_platform, "after_store", generation_id=started.id)

    async def generated() -> list[str]:
        listed = await shopper.files.ListFiles(
            files_pb2.ListFilesRequest(category="generated_image"), metadata=shopper.metadata
        )
        return [file.id for file in listed.files]

    assert len(await generated()) == 1
    canceled = await shopper.generation.CancelGeneration(
        generation_pb2.CancelGenerationRequest(id=started.id), metadata=shopper.metadata
    )
    assert canceled.status == resources_pb2.CANCELED
    assert await generated() == []
    usage = await shopper.files.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=shopper.metadata)
    assert sorted(usage.by_category) == ["product_image"] and usage.file_count == 1
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)
    # The worker paused after storing resumes after a restart and leaves the outcome alone.
    await _kill_and_restart(gen_platform)
    assert (await shopper.wait_terminal(started.id)).status == resources_pb2.CANCELED
    assert await generated() == []


async def test_a_store_that_lands_after_the_cancel_is_refused_even_if_the_worker_then_dies(
    gen_platform: Platform,
) -> None:
    """The worker checked the generation, then the cancel decided it (its discard found nothing
    stored yet), then the worker's store arrives: files refuses it, so a crash of the worker
    right after cannot leave the canceled generation's images behind."""
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a scarf [pause:before_store] [pause:after_store]")
    await _wait_for_checkpoint(gen_platform, "before_store", generation_id=started.id)
    canceled = await shopper.generation.CancelGeneration(
        generation_pb2.CancelGenerationRequest(id=started.id), metadata=shopper.metadata
    )
    assert canceled.status == resources_pb2.CANCELED
    await _resume(gen_platform, started.id, "before_store")
    # Had the store been accepted, the worker would stop at after_store: the crash comes there.
    stored = await _reaches_checkpoint(gen_platform, "after_store", 3.0, generation_id=started.id)
    await _kill_and_restart(gen_platform)
    assert not stored, "files accepted the results of a canceled generation"
    assert (await shopper.wait_terminal(started.id)).status == resources_pb2.CANCELED
    listed = await shopper.files.ListFiles(
        files_pb2.ListFilesRequest(category="generated_image"), metadata=shopper.metadata
    )
    assert list(listed.files) == []
    usage = await shopper.files.GetStorageUsage(files_pb2.GetStorageUsageRequest(), metadata=shopper.metadata)
    assert sorted(usage.by_category) == ["product_image"] and usage.file_count == 1
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)


async def test_a_start_cancelled_once_queued_keeps_its_hold_and_is_charged_once(
    gen_platform: Platform,
) -> None:
    """Found by the soak run (the gateway killed mid-request): a start whose call was cancelled
    after its generation was QUEUED released the generation's hold as if the start had failed;
    the worker then completed it and the capture was refused for ever (never terminal)."""
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    # The caller's own connection: closed, like a gateway killed mid-request.
    channel = gen_platform.user_channel("generation")
    caller = generation_pb2_grpc.GenerationServiceStub(channel)
    request = generation_pb2.CreateGenerationRequest(
        product_image_files=[product],
        prompt="a scarf [pause:after_queue]",
        parameters=resources_pb2.GenerationParameters(quality="draft"),
    )
    start = asyncio.ensure_future(caller.CreateGeneration(request, metadata=shopper.metadata, timeout=60))
    await _wait_for_checkpoint(gen_platform, "after_queue")
    await channel.close()  # the server's handler is cancelled where it waits, after QUEUED
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await start
    listed = await shopper.generation.ListGenerations(
        generation_pb2.ListGenerationsRequest(), metadata=shopper.metadata
    )
    [generation] = listed.generations
    done = await shopper.wait_terminal(generation.id, timeout=40)
    assert done.status == resources_pb2.COMPLETED, done.error
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)  # charged exactly once
