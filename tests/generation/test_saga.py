"""The generation saga against the real services (billing, files), over gRPC."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from stylestudio.generation.v1 import generation_pb2, resources_pb2
from tests.generation.conftest import Shopper, reason_of
from tests.harness import Platform


async def test_happy_path_completes_and_charges_exactly_the_price(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(10)
    product = await shopper.upload()
    started = await shopper.create([product], num_images=2, aspect_ratio="16:9")
    assert started.status == resources_pb2.QUEUED
    assert started.token_cost == 2  # ceil(0.5 x 1.2 x 1.0) per image
    assert len(started.trace_id) == 32
    assert (await shopper.balance()).available == 8

    done = await shopper.wait_terminal(started.id)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert len(done.result_image_files) == 2
    assert done.processing_time_ms >= 0 and done.completed_at.seconds > 0
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved, balance.available) == (8, 0, 8)


async def test_insufficient_tokens_reserve_nothing_and_create_nothing(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(1)
    product = await shopper.upload()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shopper.create([product], quality="high", num_images=2)
    assert reason_of(caught.value) == "INSUFFICIENT_TOKENS"
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (1, 0)


async def test_provider_failure_fails_and_gives_the_tokens_back(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a coat [fail:permanent]")
    done = await shopper.wait_terminal(started.id)
    assert done.status == resources_pb2.FAILED
    assert done.error.reason == "PROCESSING_ERROR"
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved, balance.available) == (5, 0, 5)


async def test_transient_failures_are_retried_then_complete(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a coat [fail:transient:2]")
    done = await shopper.wait_terminal(started.id)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert (await shopper.balance()).balance == 4


async def test_bad_parameters_a_foreign_file_and_a_missing_file_are_refused(gen_platform: Platform) -> None:
    shopper, stranger = Shopper(gen_platform), Shopper(gen_platform)
    await shopper.grant(5)
    product, foreign = await shopper.upload(), await stranger.upload()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"files": [product], "model": "nope"}, "VALIDATION_ERROR"),
        ({"files": [product], "num_images": 9}, "VALIDATION_ERROR"),
        ({"files": [foreign]}, "NOT_FOUND"),
        ({"files": ["7d1c2f1e-0000-4000-8000-000000000000"]}, "NOT_FOUND"),
    ]
    for case, reason in cases:
        files = case.pop("files")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await shopper.create(files, **case)  # type: ignore[arg-type]
        assert reason_of(caught.value) == reason, case
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)
    listed = await shopper.generation.ListGenerations(
        generation_pb2.ListGenerationsRequest(), metadata=shopper.metadata
    )
    assert list(listed.generations) == []


async def test_sixth_generation_in_an_hour_on_free_is_rate_limited(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(20)
    product = await shopper.upload()
    for _ in range(5):
        await shopper.create([product])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shopper.create([product])
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "RATE_LIMITED"
    from kit.errors import from_rpc_error

    assert (from_rpc_error(caught.value).retry_after_seconds or 0) > 0


async def test_idempotency_key_returns_the_first_generation(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    first = await shopper.create([product], key="k-1")
    again = await shopper.create([product], key="k-1")
    assert again.id == first.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shopper.create([product], prompt="something else", key="k-1")
    assert reason_of(caught.value) == "CONFLICT"
    await shopper.wait_terminal(first.id)
    assert (await shopper.balance()).balance == 4


async def test_cancel_while_processing_releases_the_hold(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    slow = await shopper.create([product], prompt="a hat [latency:3]")
    while (await shopper.get(slow.id)).status != resources_pb2.PROCESSING:
        await asyncio.sleep(0.05)
    canceled = await cancel(shopper, slow.id)
    assert canceled.status == resources_pb2.CANCELED
    assert (await cancel(shopper, slow.id)).status == resources_pb2.CANCELED  # again: unchanged
    await asyncio.sleep(3.5)  # the provider call ends; nothing may change any more
    assert (await shopper.get(slow.id)).status == resources_pb2.CANCELED
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)


async def test_cancel_while_queued_releases_and_finished_ones_cannot_be_canceled(
    gen_platform: Platform,
) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    queued = await shopper.create([product], prompt="a scarf [queued:1.5]")
    canceled = await cancel(shopper, queued.id)
    assert canceled.status == resources_pb2.CANCELED
    done = await shopper.create([product])
    assert (await shopper.wait_terminal(done.id)).status == resources_pb2.COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await cancel(shopper, done.id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await asyncio.sleep(2)
    assert (await shopper.get(queued.id)).status == resources_pb2.CANCELED
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)


async def cancel(shopper: Shopper, generation_id: str) -> resources_pb2.Generation:
    return await shopper.generation.CancelGeneration(
        generation_pb2.CancelGenerationRequest(id=generation_id), metadata=shopper.metadata
    )


async def test_deadline_expiry_fails_and_releases(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a boot [latency:60]")
    done = await shopper.wait_terminal(started.id, timeout=40)
    assert done.status == resources_pb2.FAILED
    assert done.error.reason == "PROVIDER_UNAVAILABLE"
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)
