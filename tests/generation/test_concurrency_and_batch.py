"""Many starts on one wallet, batches, WatchGeneration over gRPC and the events for analytics."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from redis.asyncio import Redis

from kit.db import Database
from kit.events import Event, stream_key, unpack
from services.billing.reconcile import reconcile
from stylestudio.generation.v1 import events_pb2, generation_pb2, resources_pb2
from tests.generation.conftest import Shopper, reason_of
from tests.harness import Platform
from tests.harness.streams import stream_entries


async def _reconciles(platform: Platform) -> None:
    db = Database(platform.database.service_urls["billing"], "billing")
    try:
        report = await reconcile(db)
    finally:
        await db.dispose()
    assert report.balanced, report.differences


async def test_fifty_concurrent_starts_on_a_wallet_that_pays_for_twenty(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform, plan="enterprise")
    await shopper.grant(20)
    product = await shopper.upload()
    outcomes = await asyncio.gather(
        *(shopper.create([product], prompt=f"shoe {i}") for i in range(50)), return_exceptions=True
    )
    started = [o for o in outcomes if isinstance(o, resources_pb2.Generation)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(started) == 20 and len(refused) == 30, (
        len(started),
        sorted(f"{e.code().name}:{reason_of(e)}" for e in refused),
        [o for o in outcomes if not isinstance(o, (resources_pb2.Generation, grpc.aio.AioRpcError))],
    )
    assert {reason_of(error) for error in refused} == {"INSUFFICIENT_TOKENS"}
    for generation in started:
        assert (await shopper.wait_terminal(generation.id, timeout=60)).status == resources_pb2.COMPLETED
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (0, 0)
    listed = await shopper.generation.ListGenerations(
        generation_pb2.ListGenerationsRequest(page_size=100), metadata=shopper.metadata
    )
    assert len(listed.generations) == 20
    await _reconciles(gen_platform)


async def test_batch_is_for_pro_and_each_request_stands_alone(gen_platform: Platform) -> None:
    free, pro = Shopper(gen_platform), Shopper(gen_platform, plan="pro")
    await pro.grant(3)
    product = await pro.upload()

    def item(**parameters: object) -> generation_pb2.CreateGenerationRequest:
        return generation_pb2.CreateGenerationRequest(
            product_image_files=[product],
            prompt="a belt",
            parameters=resources_pb2.GenerationParameters(**({"quality": "draft"} | parameters)),  # type: ignore[arg-type]
        )

    async def batch(
        shopper: Shopper, items: list[generation_pb2.CreateGenerationRequest], key: str = ""
    ) -> generation_pb2.BatchCreateGenerationsResponse:
        metadata = shopper.metadata + ((("idempotency-key", key),) if key else ())
        return await shopper.generation.BatchCreateGenerations(
            generation_pb2.BatchCreateGenerationsRequest(requests=items), metadata=metadata
        )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch(free, [item()])
    assert reason_of(caught.value) == "FEATURE_NOT_IN_PLAN"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch(pro, [item()] * 21)
    assert reason_of(caught.value) == "VALIDATION_ERROR"

    items = [item(), item(model="nope"), item(), item(), item()]
    answered = await batch(pro, items, key="batch-1")
    outcomes = [r.WhichOneof("result") for r in answered.results]
    assert outcomes == ["generation", "error", "generation", "generation", "error"]
    assert answered.results[1].error.reason == "VALIDATION_ERROR"
    assert answered.results[4].error.reason == "INSUFFICIENT_TOKENS"
    again = await batch(pro, items, key="batch-1")  # the same key: the same generations, nothing new
    assert [r.generation.id for r in again.results if r.HasField("generation")] == [
        r.generation.id for r in answered.results if r.HasField("generation")
    ]
    for result in answered.results:
        if result.HasField("generation"):
            assert (await pro.wait_terminal(result.generation.id)).status == resources_pb2.COMPLETED
    balance = await pro.balance()
    assert (balance.balance, balance.reserved) == (0, 0)


async def test_watch_streams_current_state_each_change_and_ends(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt="a vest [queued:0.5] [latency:0.5]")
    watched = [
        g.status
        async for g in shopper.generation.WatchGeneration(
            generation_pb2.WatchGenerationRequest(id=started.id), metadata=shopper.metadata
        )
    ]
    assert watched == [resources_pb2.QUEUED, resources_pb2.PROCESSING, resources_pb2.COMPLETED]
    finished = [
        g.status
        async for g in shopper.generation.WatchGeneration(
            generation_pb2.WatchGenerationRequest(id=started.id), metadata=shopper.metadata
        )
    ]
    assert finished == [resources_pb2.COMPLETED]
    stranger = Shopper(gen_platform)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stranger.generation.WatchGeneration(
            generation_pb2.WatchGenerationRequest(id=started.id), metadata=stranger.metadata
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_events_for_analytics(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(5)
    product = await shopper.upload()
    completed = await shopper.create([product], style="fashion")
    failed = await shopper.create([product], prompt="a cap [fail:permanent]")
    canceled = await shopper.create([product], prompt="a sock [queued:1]")
    await shopper.generation.CancelGeneration(
        generation_pb2.CancelGenerationRequest(id=canceled.id), metadata=shopper.metadata
    )
    for generation in (completed, failed):
        await shopper.wait_terminal(generation.id)
    await asyncio.sleep(1.0)  # the outbox relay publishes after commit
    redis = Redis.from_url(gen_platform.redis_url)
    try:
        entries = await stream_entries(redis, stream_key(gen_platform.redis_prefix, "events.generation"))
    finally:
        await redis.aclose()
    mine: dict[str, list[tuple[str, object]]] = {}
    kinds = {
        "generation.started": events_pb2.GenerationStarted,
        "generation.processing": events_pb2.GenerationProcessing,
        "generation.completed": events_pb2.GenerationCompleted,
        "generation.failed": events_pb2.GenerationFailed,
        "generation.canceled": events_pb2.GenerationCanceled,
    }
    for _, fields in entries:
        event = Event.FromString(fields[b"event"])
        if event.user_id != shopper.user_id:  # others' events, batch summaries among them
            continue
        data = unpack(event, kinds[event.type])
        mine.setdefault(data.generation_id, []).append((event.type, data))  # type: ignore[attr-defined]
    assert [t for t, _ in mine[completed.id]] == [
        "generation.started",
        "generation.processing",
        "generation.completed",
    ]
    done = mine[completed.id][-1][1]
    assert (done.token_cost, done.model, done.style) == (1, "stable-diffusion-xl", "fashion")  # type: ignore[attr-defined]
    assert done.processing_time_ms > 0  # type: ignore[attr-defined]
    assert [t for t, _ in mine[failed.id]][-1] == "generation.failed"
    assert mine[failed.id][-1][1].reason == "PROCESSING_ERROR"  # type: ignore[attr-defined]
    # Its message goes with it (for the usage log), never the prompt.
    failure = mine[failed.id][-1][1]
    told = await shopper.wait_terminal(failed.id)
    assert failure.message == told.error.message and "a cap" not in failure.message  # type: ignore[attr-defined]
    assert [t for t, _ in mine[canceled.id]] == ["generation.started", "generation.canceled"]
    started = mine[completed.id][0][1]
    assert (started.token_cost, started.num_images) == (1, 1)  # type: ignore[attr-defined]
