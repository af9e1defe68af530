"""The Replicate provider against a local server speaking Replicate's API and signing its webhooks.

Webhooks reach the service the way Replicate's do: POSTed to the gateway's
``/webhooks/replicate`` with the Standard Webhooks headers.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psycopg
import pytest

from kit.infra import libpq_url
from stylestudio.generation.v1 import resources_pb2
from tests.generation.conftest import REPLICATE_MODEL, REPLICATE_VERSION, Shopper
from tests.generation.replicate_server import FakeReplicate
from tests.harness import Platform


async def _started_prediction(
    platform: Platform, replicate: FakeReplicate, prompt: str = "a silk blouse"
) -> tuple[Shopper, str, str]:
    """A generation on the Replicate model, once its prediction exists: (shopper, generation, prediction)."""
    shopper = Shopper(platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create([product], prompt=prompt, model=REPLICATE_MODEL)
    assert started.token_cost == 1
    deadline = time.monotonic() + 15
    while True:
        found = [p for p in replicate.predictions.values() if prompt in p["input"].get("prompt", "")]
        if found:
            return shopper, started.id, found[0]["id"]
        assert time.monotonic() < deadline, "no prediction was created"
        await asyncio.sleep(0.05)


async def test_a_signed_webhook_completes_the_generation(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, generation_id, prediction_id = await _started_prediction(gen_platform, replicate, "webhook coat")
    prediction = replicate.predictions[prediction_id]
    assert prediction["version"] == REPLICATE_VERSION
    webhook = f"{gen_platform.gateway_url}/webhooks/replicate?generation_id={generation_id}"
    assert prediction["_webhook"] == webhook
    assert prediction["_webhook_events_filter"] == ["start", "completed"]
    assert prediction["input"]["num_outputs"] == 1 and prediction["input"]["image"].startswith("data:image/")
    assert replicate.unauthorized == 0
    assert (await shopper.get(generation_id)).status == resources_pb2.PROCESSING

    replicate.succeed(prediction_id)
    answered = await replicate.send_webhook(prediction_id)
    assert answered.status_code == 200, answered.text
    done = await shopper.wait_terminal(generation_id, timeout=2.5)  # sooner than a poll (3 s)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert len(done.result_image_files) == 1
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)


@pytest.mark.parametrize("tampering", ["bad signature", "stale timestamp", "other secret"])
async def test_forged_or_stale_webhooks_are_refused(
    gen_platform: Platform, replicate: FakeReplicate, tampering: str
) -> None:
    shopper, generation_id, prediction_id = await _started_prediction(
        gen_platform, replicate, f"forged {tampering}"
    )
    payload = replicate.succeed(prediction_id) | {"status": "failed", "error": "forged"}
    now = int(time.time())
    if tampering == "bad signature":
        answered = await replicate.send_webhook(prediction_id, payload, signature="v1,bm90IGEgc2lnbmF0dXJl")
    elif tampering == "stale timestamp":
        answered = await replicate.send_webhook(prediction_id, payload, timestamp=now - 3600)
    else:
        forger = FakeReplicate(secret="whsec_" + "Zm9yZ2VyLXNlY3JldC1mb3ItdGVzdHMtMzJieXRlcw==")
        webhook_id = "msg_forged"
        body = json.dumps(payload).encode()
        answered = await replicate.send_webhook(
            prediction_id,
            payload,
            webhook_id=webhook_id,
            signature=forger.sign(webhook_id, now, body),
            timestamp=now,
        )
    assert answered.status_code == 400, answered.text
    assert answered.json()["error"]["reason"] == "VALIDATION_ERROR"
    # The forged "failed" changed nothing: the real outcome (succeeded, found by polling) wins.
    done = await shopper.wait_terminal(generation_id, timeout=10)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert (await shopper.balance()).balance == 4


async def test_duplicate_and_out_of_order_webhooks_act_once(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, generation_id, prediction_id = await _started_prediction(
        gen_platform, replicate, "duplicate hat"
    )
    processing = dict(replicate.predictions[prediction_id]) | {"status": "processing"}
    processing = {k: v for k, v in processing.items() if not k.startswith("_")}
    replicate.succeed(prediction_id)
    first = await replicate.send_webhook(prediction_id, webhook_id="msg_dup_1")
    again = await replicate.send_webhook(prediction_id, webhook_id="msg_dup_1")
    assert (first.status_code, again.status_code) == (200, 200)
    done = await shopper.wait_terminal(generation_id, timeout=2.5)
    assert done.status == resources_pb2.COMPLETED, done.error
    # An older "processing" delivered late, and the success once more under a new id.
    late = await replicate.send_webhook(prediction_id, processing, webhook_id="msg_late_processing")
    resent = await replicate.send_webhook(prediction_id, webhook_id="msg_dup_2")
    assert (late.status_code, resent.status_code) == (200, 200)
    await asyncio.sleep(1.0)
    again_done = await shopper.get(generation_id)
    assert again_done.status == resources_pb2.COMPLETED
    assert list(again_done.result_image_files) == list(done.result_image_files)
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)  # charged once


async def test_without_a_webhook_polling_completes_it(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, generation_id, prediction_id = await _started_prediction(gen_platform, replicate, "polled scarf")
    replicate.succeed(prediction_id)  # and never a webhook
    done = await shopper.wait_terminal(generation_id, timeout=15)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert (await shopper.balance()).balance == 4


async def test_a_failed_prediction_fails_and_refunds(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, generation_id, prediction_id = await _started_prediction(gen_platform, replicate, "failing boot")
    replicate.fail(prediction_id)
    assert (await replicate.send_webhook(prediction_id)).status_code == 200
    done = await shopper.wait_terminal(generation_id, timeout=5)
    assert done.status == resources_pb2.FAILED
    assert done.error.reason == "PROCESSING_ERROR"
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)


async def test_cancel_cancels_the_prediction_and_releases(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    from tests.generation.test_saga import cancel

    shopper, generation_id, prediction_id = await _started_prediction(gen_platform, replicate, "canceled tie")
    canceled = await cancel(shopper, generation_id)
    assert canceled.status == resources_pb2.CANCELED
    assert prediction_id in replicate.canceled
    assert replicate.predictions[prediction_id]["status"] == "canceled"
    # Replicate's own "canceled" webhook changes nothing more.
    assert (await replicate.send_webhook(prediction_id)).status_code == 200
    await asyncio.sleep(0.5)
    assert (await shopper.get(generation_id)).status == resources_pb2.CANCELED
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (5, 0)


def _waiting_to_save_a_prediction(admin_url: str) -> int:
    """Connections waiting on a row lock to save a generation's prediction id."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query ILIKE '%SET prediction_id%'"
        ).fetchone()
    return row[0] if row else 0


async def test_a_start_webhook_racing_the_workers_save_does_not_cancel_the_prediction(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    # The prediction's "start" webhook finds no generation with its id (the worker's save is not
    # committed yet), then fails to adopt it (the save committed meanwhile): it is the generation's
    # own prediction, not a duplicate. A row lock held by the test orders the two saves.
    admin_url = gen_platform.database.admin_url
    lock = psycopg.connect(libpq_url(admin_url))
    webhook: asyncio.Task[httpx.Response] | None = None

    async def lock_the_generation(prediction_id: str) -> None:
        url = replicate.predictions[prediction_id]["_webhook"]
        generation_id = url.rsplit("generation_id=", 1)[1]
        lock.execute("SELECT 1 FROM generation.generations WHERE id = %s FOR UPDATE", (generation_id,))

    replicate.before_answering = lock_the_generation
    try:
        shopper, generation_id, prediction_id = await _started_prediction(
            gen_platform, replicate, "racing start gloves"
        )
        replicate.before_answering = None
        deadline = time.monotonic() + 10
        # the worker's save waits first, then the webhook's adoption
        for waiting in (1, 2):
            while await asyncio.to_thread(_waiting_to_save_a_prediction, admin_url) < waiting:
                assert time.monotonic() < deadline, f"{waiting} saves never waited"
                await asyncio.sleep(0.05)
            if waiting == 1:
                webhook = asyncio.create_task(replicate.send_webhook(prediction_id))
    finally:
        replicate.before_answering = None
        lock.rollback()
        lock.close()
    assert webhook is not None
    assert (await webhook).status_code == 200
    await asyncio.sleep(0.5)
    assert prediction_id not in replicate.canceled
    replicate.succeed(prediction_id)
    assert (await replicate.send_webhook(prediction_id)).status_code == 200
    done = await shopper.wait_terminal(generation_id, timeout=5)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert (await shopper.balance()).balance == 4


async def _create_prediction(
    replicate: FakeReplicate, platform: Platform, generation_id: str, inputs: dict[str, object]
) -> str:
    """A prediction created the way the provider does, for ``generation_id``: what a worker that
    crashed right after creating it (before saving its id) leaves at Replicate."""
    async with httpx.AsyncClient(base_url=replicate.url, timeout=10) as client:
        created = await client.post(
            "/v1/predictions",
            headers={"Authorization": f"Bearer {replicate.api_token}"},
            json={
                "version": REPLICATE_VERSION,
                "input": inputs,
                "webhook": f"{platform.gateway_url}/webhooks/replicate?generation_id={generation_id}",
                "webhook_events_filter": ["start", "completed"],
            },
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def _orphaned(
    platform: Platform, replicate: FakeReplicate, prompt: str, seed: int
) -> tuple[Shopper, resources_pb2.Generation, str]:
    """A generation whose worker took it and paused before creating a prediction, and a
    prediction for it at Replicate: what an earlier attempt that crashed before saving its
    id leaves behind. (shopper, generation, orphaned prediction id)"""
    from tests.generation.test_crash_safety import _wait_for_checkpoint

    shopper = Shopper(platform)
    await shopper.grant(5)
    product = await shopper.upload()
    started = await shopper.create(
        [product], prompt=f"{prompt} [pause:after_processing]", model=REPLICATE_MODEL, seed=seed
    )
    await _wait_for_checkpoint(platform, "after_processing", generation_id=started.id)
    orphan = await _create_prediction(
        replicate, platform, started.id, {"prompt": started.enhanced_prompt, "seed": seed}
    )
    return shopper, started, orphan


async def test_a_prediction_whose_id_was_never_saved_is_adopted_from_its_webhook(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    from tests.generation.test_crash_safety import _kill_and_restart

    shopper, started, orphan = await _orphaned(gen_platform, replicate, "adopted parka", 4242)
    assert (await replicate.send_webhook(orphan)).status_code == 200  # "start": adopted
    replicate.succeed(orphan)
    assert (await replicate.send_webhook(orphan)).status_code == 200  # "completed": finished with it
    done = await shopper.wait_terminal(started.id, timeout=15)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert orphan not in replicate.canceled
    # The restarted worker finds the outcome and creates no second prediction.
    await _kill_and_restart(gen_platform)
    await asyncio.sleep(1.0)
    assert [p["id"] for p in replicate.predictions.values() if "adopted parka" in p["input"]["prompt"]] == [
        orphan
    ]
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)


async def test_a_duplicate_prediction_is_cancelled_as_it_starts(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, generation_id, saved = await _started_prediction(gen_platform, replicate, "twice made vest")
    inputs = dict(replicate.predictions[saved]["input"])
    duplicate = await _create_prediction(replicate, gen_platform, generation_id, inputs)
    # A webhook naming the generation but signed over other inputs is not believed.
    stranger = await _create_prediction(replicate, gen_platform, generation_id, inputs | {"seed": -1})
    for prediction in (duplicate, stranger):
        assert (await replicate.send_webhook(prediction)).status_code == 200
    assert duplicate in replicate.canceled
    assert stranger not in replicate.canceled and saved not in replicate.canceled
    replicate.succeed(saved)
    assert (await replicate.send_webhook(saved)).status_code == 200
    done = await shopper.wait_terminal(generation_id, timeout=5)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert (await shopper.balance()).balance == 4


async def test_a_start_webhook_that_beats_the_saved_id_does_not_cancel_the_prediction(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    replicate.start_webhook_before_answering = True
    try:
        shopper, generation_id, prediction_id = await _started_prediction(
            gen_platform, replicate, "raced start coat"
        )
        await asyncio.sleep(1.0)  # the worker has saved (or found adopted) the id by now
    finally:
        replicate.start_webhook_before_answering = False
    assert prediction_id not in replicate.canceled
    replicate.succeed(prediction_id)
    assert (await replicate.send_webhook(prediction_id)).status_code == 200
    done = await shopper.wait_terminal(generation_id, timeout=5)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert prediction_id not in replicate.canceled


async def test_an_orphan_adopted_while_the_worker_submits_makes_the_worker_cancel_its_own(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    """An earlier attempt's prediction (its id never saved) starts, and is adopted, while the
    worker is creating a second one: the worker finds the adopted id and cancels its own."""
    from tests.generation.test_crash_safety import _resume

    shopper, started, orphan = await _orphaned(gen_platform, replicate, "overtaken anorak", 5151)
    adopted: list[int] = []

    async def orphan_starts(_new: str) -> None:  # before the worker hears its own id
        adopted.append((await replicate.send_webhook(orphan)).status_code)

    def made() -> list[str]:
        return [p["id"] for p in replicate.predictions.values() if "overtaken anorak" in p["input"]["prompt"]]

    canceled_before = len(replicate.canceled)
    replicate.before_answering = orphan_starts
    try:
        await _resume(gen_platform, started.id, "after_processing")
        deadline = time.monotonic() + 15
        while len(replicate.canceled) == canceled_before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        replicate.before_answering = None
    assert adopted == [200]
    assert len(made()) == 2 and made()[0] == orphan
    assert replicate.canceled[canceled_before:] == [made()[1]]  # the worker's own, not the adopted one
    replicate.succeed(orphan)
    assert (await replicate.send_webhook(orphan)).status_code == 200
    done = await shopper.wait_terminal(started.id, timeout=15)
    assert done.status == resources_pb2.COMPLETED, done.error
    assert orphan not in replicate.canceled
    balance = await shopper.balance()
    assert (balance.balance, balance.reserved) == (4, 0)
