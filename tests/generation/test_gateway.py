"""The generation routes of API.md end to end through the REST gateway, with the trace and analytics."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from tests.generation.conftest import Shopper, png
from tests.harness import Platform


@pytest.fixture
async def rest(gen_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gen_platform.gateway_url, timeout=30.0) as client:
        yield client


async def _sse_statuses(rest: httpx.AsyncClient, path: str, headers: dict[str, str]) -> list[str]:
    statuses = []
    async with rest.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            assert not line.startswith("event: error"), line
            if line.startswith("data:"):
                statuses.append(json.loads(line[5:])["status"])
    return statuses


async def _eventually(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.2)


async def test_happy_path_through_the_gateway(gen_platform: Platform, rest: httpx.AsyncClient) -> None:
    shopper = Shopper(gen_platform)
    await shopper.grant(10)
    auth = {"Authorization": f"Bearer {shopper.token}"}
    uploaded = await rest.post(
        "/v1/files",
        headers=auth,
        data={"category": "product_image"},
        files={"file": ("dress.png", png("green"), "image/png")},
    )
    assert uploaded.status_code == 200, uploaded.text
    body = {
        "productImageFiles": [uploaded.json()["id"]],
        "prompt": "a green summer dress [latency:0.5]",
        "parameters": {"quality": "draft", "aspectRatio": "16:9", "numImages": 2, "style": "studio"},
    }
    posted = await rest.post("/v1/generations", json=body, headers=auth | {"Idempotency-Key": "rest-1"})
    assert posted.status_code == 200, posted.text
    started = posted.json()
    assert started["status"] == "QUEUED" and started["tokenCost"] == "2"
    assert "professional studio lighting" in started["enhancedPrompt"]
    again = await rest.post("/v1/generations", json=body, headers=auth | {"Idempotency-Key": "rest-1"})
    assert again.json()["id"] == started["id"]

    # The watch: the current state first, then each change, ending with the terminal one.
    statuses = await _sse_statuses(rest, f"/v1/generations/{started['id']}:watch", auth)
    assert statuses[0] in ("QUEUED", "PROCESSING") and statuses[-1] == "COMPLETED"
    assert len(statuses) == len(set(statuses)), statuses
    done = (await rest.get(f"/v1/generations/{started['id']}", headers=auth)).json()
    assert done["status"] == "COMPLETED" and len(done["resultImageFiles"]) == 2
    assert int(done["processingTimeMs"]) > 0
    for file_id in done["resultImageFiles"]:
        content = await rest.get(f"/v1/files/{file_id}/content", headers=auth)
        assert content.status_code == 200 and content.headers["content-type"].startswith("image/")
        with Image.open(io.BytesIO(content.content)) as image:
            assert image.size == (512, 288)
    balance = (await rest.get("/v1/billing/balance", headers=auth)).json()
    assert (int(balance["balance"]), int(balance.get("reserved", 0))) == (8, 0)
    listed = (await rest.get("/v1/generations", params={"status": "COMPLETED"}, headers=auth)).json()
    assert [g["id"] for g in listed["generations"]] == [started["id"]]

    async def analytics_actions() -> set[str]:
        records = (await rest.get("/v1/analytics/usage", headers=auth)).json().get("records", [])
        actions = {r["action"] for r in records if r["metadata"].get("generationId") == started["id"]}
        return actions if {"generation_started", "generation_completed"} <= actions else set()

    await _eventually(analytics_actions)
    _check_span_tree(gen_platform, started["id"], started["traceId"])


def _check_span_tree(platform: Platform, generation_id: str, trace_id: str) -> None:
    """One trace from the gateway's POST through start, worker, provider, billing and files."""
    spans = [json.loads(line) for line in platform.trace_file.read_text().splitlines() if line]
    tree = [s for s in spans if s["trace_id"] == trace_id]
    ids = {s["span_id"] for s in tree}
    roots = [s for s in tree if s["parent_span_id"] not in ids]
    assert len(roots) == 1 and roots[0]["service"] == "stylestudio-gateway", roots
    assert roots[0]["parent_span_id"] == ""
    services = {s["service"].removeprefix("stylestudio-") for s in tree}
    assert {"gateway", "generation", "billing", "files"} <= services
    names = {s["name"] for s in tree}
    for expected in ("generation.start", "process generation.job", "generation.process", "provider local"):
        assert expected in names, (expected, sorted(names))
    assert any("ReserveTokens" in n for n in names) and any("CaptureHold" in n for n in names)
    assert any("StoreGenerationResults" in n for n in names)
    tagged = [s for s in tree if s["attributes"].get("stylestudio.generation.id") == generation_id]
    assert tagged and all(
        s["attributes"].get("stylestudio.user.id") for s in tagged if s["name"] == "generation.process"
    )
    by_id = {s["span_id"]: s for s in tree}
    process = next(s for s in tree if s["name"] == "generation.process")
    chain = []
    while process["parent_span_id"] in by_id:
        process = by_id[process["parent_span_id"]]
        chain.append(process["name"])
    assert chain[-1] == roots[0]["name"] and "process generation.job" in chain, chain


async def test_rest_errors_for_generations(gen_platform: Platform, rest: httpx.AsyncClient) -> None:
    shopper = Shopper(gen_platform)
    auth = {"Authorization": f"Bearer {shopper.token}"}
    product = await shopper.upload()
    body = {"productImageFiles": [product], "prompt": "a coat", "parameters": {"quality": "draft"}}
    poor = await rest.post("/v1/generations", json=body, headers=auth)
    assert (poor.status_code, poor.json()["error"]["reason"]) == (402, "INSUFFICIENT_TOKENS")
    bad = await rest.post("/v1/generations", json=body | {"parameters": {"numImages": 7}}, headers=auth)
    assert (bad.status_code, bad.json()["error"]["reason"]) == (400, "VALIDATION_ERROR")
    missing = await rest.get("/v1/generations/7d1c2f1e-0000-4000-8000-000000000000", headers=auth)
    assert missing.status_code == 404
    assert (await rest.post("/v1/generations", json=body)).status_code == 401
    batch = await rest.post("/v1/generations:batch", json={"requests": [body]}, headers=auth)
    assert (batch.status_code, batch.json()["error"]["reason"]) == (403, "FEATURE_NOT_IN_PLAN")


async def test_idempotency_keys_of_singles_and_batches_through_the_gateway(
    gen_platform: Platform, rest: httpx.AsyncClient
) -> None:
    shopper = Shopper(gen_platform, plan="pro")
    await shopper.grant(10)
    auth = {"Authorization": f"Bearer {shopper.token}"}
    product = await shopper.upload()

    def body(prompt: str) -> dict[str, object]:
        return {"productImageFiles": [product], "prompt": prompt, "parameters": {"quality": "draft"}}

    single = await rest.post("/v1/generations", json=body("a hat"), headers=auth | {"Idempotency-Key": "s-1"})
    assert single.status_code == 200, single.text
    other = await rest.post("/v1/generations", json=body("a cap"), headers=auth | {"Idempotency-Key": "s-1"})
    assert (other.status_code, other.json()["error"]["reason"]) == (409, "CONFLICT")

    batch_key = {"Idempotency-Key": "b-1"}
    batch = {"requests": [body("a scarf"), body("a glove")]}
    first = await rest.post("/v1/generations:batch", json=batch, headers=auth | batch_key)
    assert first.status_code == 200, first.text
    ids = [r["generation"]["id"] for r in first.json()["results"]]
    again = await rest.post("/v1/generations:batch", json=batch, headers=auth | batch_key)
    assert [r["generation"]["id"] for r in again.json()["results"]] == ids
    for changed in (
        {"requests": [body("a scarf"), body("a mitten")]},
        {"requests": [body("a scarf")]},
        {"requests": [body("a scarf"), body("a glove"), body("a sock")]},
    ):
        refused = await rest.post("/v1/generations:batch", json=changed, headers=auth | batch_key)
        assert (refused.status_code, refused.json()["error"]["reason"]) == (409, "CONFLICT"), refused.text

    # A single create whose key looks like a batch item's is its own generation, never item 0.
    for key in ("b-1:0", "batch:0:b-1", "b-1"):
        alone = await rest.post(
            "/v1/generations", json=body("a scarf"), headers=auth | {"Idempotency-Key": key}
        )
        assert alone.status_code == 200, alone.text
        assert alone.json()["id"] not in ids
    listed = (await rest.get("/v1/generations", params={"pageSize": 100}, headers=auth)).json()
    assert len(listed["generations"]) == 1 + 2 + 3
