"""Parameters only some models take (negativePrompt, guidanceScale) and the honest model catalogue,
through the REST gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.generation.settings import GenerationSettings
from tests.generation.conftest import REPLICATE_MODEL, Shopper
from tests.generation.replicate_server import FakeReplicate
from tests.harness import Platform

NEGATIVE = "blurry, watermark, extra fingers"


@pytest.fixture
async def rest(gen_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gen_platform.gateway_url, timeout=30.0) as client:
        yield client


async def _shopper(platform: Platform, tokens: int, plan: str = "free") -> tuple[Shopper, dict[str, str]]:
    shopper = Shopper(platform, plan=plan)
    await shopper.grant(tokens)
    return shopper, {"Authorization": f"Bearer {shopper.token}"}


async def _finished(rest: httpx.AsyncClient, auth: dict[str, str], generation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        current = (await rest.get(f"/v1/generations/{generation_id}", headers=auth)).json()
        if current["status"] in ("COMPLETED", "FAILED", "CANCELED"):
            return current  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, current["status"]
        await asyncio.sleep(0.1)


async def test_models_list_their_parameters_provider_and_stand_in(rest: httpx.AsyncClient) -> None:
    models = {m["name"]: m for m in (await rest.get("/v1/models")).json()["models"]}
    sdxl, replicated, midjourney = (
        models["stable-diffusion-xl"],
        models[REPLICATE_MODEL],
        models["midjourney"],
    )
    assert (sdxl["provider"], sdxl["standIn"]) == ("local", True)
    assert "negativePrompt" in sdxl["parameters"] and "guidanceScale" in sdxl["parameters"]
    assert {"seed", "numImages", "aspectRatio"} <= set(sdxl["parameters"])
    # A model the (fake) Replicate runs is the real thing: no standIn (false is left out of JSON).
    assert replicated["provider"] == "replicate" and not replicated.get("standIn", False)
    assert "negativePrompt" in midjourney["parameters"] and "guidanceScale" not in midjourney["parameters"]


async def test_negative_prompt_and_guidance_are_recorded_echoed_and_change_the_local_picture(
    gen_platform: Platform, rest: httpx.AsyncClient
) -> None:
    shopper, auth = await _shopper(gen_platform, 10)
    product = await shopper.upload(colour="teal")

    async def generate(negative: str, guidance: float) -> tuple[dict[str, Any], bytes]:
        parameters = {"quality": "draft", "seed": 1234, "negativePrompt": negative, "guidanceScale": guidance}
        body = {"productImageFiles": [product], "prompt": "a teal scarf", "parameters": parameters}
        posted = await rest.post("/v1/generations", json=body, headers=auth)
        assert posted.status_code == 200, posted.text
        echoed = posted.json()["parameters"]
        assert (echoed["negativePrompt"], echoed["guidanceScale"]) == (negative, guidance)
        done = await _finished(rest, auth, posted.json()["id"])
        assert done["status"] == "COMPLETED", done
        image = await rest.get(f"/v1/files/{done['resultImageFiles'][0]}/content", headers=auth)
        assert image.status_code == 200
        return done, image.content

    first, picture = await generate(NEGATIVE, 7.5)
    assert first["parameters"]["negativePrompt"] == NEGATIVE and first["parameters"]["guidanceScale"] == 7.5
    _, same = await generate(NEGATIVE, 7.5)
    _, other = await generate("text, logo", 7.5)
    assert same == picture  # deterministic per seed, negative prompt and guidance
    assert other != picture  # only the negative prompt changed


async def test_parameters_out_of_range_too_long_or_not_taken_are_400_naming_the_field(
    gen_platform: Platform, rest: httpx.AsyncClient
) -> None:
    shopper, auth = await _shopper(gen_platform, 5)
    product = await shopper.upload()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"guidanceScale": 0.5}, "parameters.guidance_scale"),
        ({"guidanceScale": 20.5}, "parameters.guidance_scale"),
        ({"negativePrompt": "x" * 1001}, "parameters.negative_prompt"),
        ({"negativePrompt": "no\u0000nul"}, "parameters.negativePrompt"),  # the kit's string rules
        ({"model": "midjourney", "guidanceScale": 7}, "parameters.guidance_scale"),
        ({"model": "dall-e-3-not", "negativePrompt": "x"}, "parameters.model"),
    ]
    for parameters, field in cases:
        body = {"productImageFiles": [product], "prompt": "a coat", "parameters": parameters}
        refused = await rest.post("/v1/generations", json=body, headers=auth)
        error = refused.json()["error"]
        assert (refused.status_code, error["reason"]) == (400, "VALIDATION_ERROR"), (parameters, error)
        assert error["details"]["field"] == field, (parameters, error)
    not_taken = await rest.post(
        "/v1/generations",
        json={"productImageFiles": [product], "prompt": "a coat", "parameters": cases[4][0]},
        headers=auth,
    )
    assert "guidanceScale" in not_taken.json()["error"]["message"]
    assert (await shopper.balance()).reserved == 0  # nothing was held


async def test_batch_items_take_the_same_parameters(gen_platform: Platform, rest: httpx.AsyncClient) -> None:
    shopper, auth = await _shopper(gen_platform, 5, plan="pro")
    product = await shopper.upload(colour="olive")
    items = [
        {
            "productImageFiles": [product],
            "prompt": "an olive jacket",
            "parameters": {"quality": "draft", "negativePrompt": NEGATIVE, "guidanceScale": 3},
        },
        {
            "productImageFiles": [product],
            "prompt": "an olive jacket",
            "parameters": {"quality": "draft", "model": "midjourney", "guidanceScale": 3},
        },
    ]
    answered = await rest.post("/v1/generations:batch", json={"requests": items}, headers=auth)
    assert answered.status_code == 200, answered.text
    accepted, refused = answered.json()["results"]
    generation = await rest.get(f"/v1/generations/{accepted['generation']['id']}", headers=auth)
    assert generation.json()["parameters"]["negativePrompt"] == NEGATIVE
    assert generation.json()["parameters"]["guidanceScale"] == 3
    assert refused["error"]["reason"] == "VALIDATION_ERROR" and "guidanceScale" in refused["error"]["message"]
    await _finished(rest, auth, accepted["generation"]["id"])


async def test_the_replicate_adapter_sends_negative_prompt_and_guidance_scale(
    gen_platform: Platform, replicate: FakeReplicate
) -> None:
    shopper, _ = await _shopper(gen_platform, 5)
    product = await shopper.upload()
    prompt = "a linen shirt for the replicate parameters"
    started = await shopper.create(
        [product], prompt=prompt, model=REPLICATE_MODEL, negative_prompt=NEGATIVE, guidance_scale=12.5
    )
    deadline = time.monotonic() + 15
    while not (found := [p for p in replicate.predictions.values() if prompt in p["input"]["prompt"]]):
        assert time.monotonic() < deadline, "no prediction was created"
        await asyncio.sleep(0.05)
    inputs = found[0]["input"]
    assert (inputs["negative_prompt"], inputs["guidance_scale"]) == (NEGATIVE, 12.5)
    replicate.succeed(found[0]["id"])
    assert (await replicate.send_webhook(found[0]["id"])).status_code == 200
    done = await shopper.wait_terminal(started.id)
    assert done.parameters.negative_prompt == NEGATIVE and done.parameters.guidance_scale == 12.5


def test_stand_in_models_are_refused_by_default_in_production_only() -> None:
    assert GenerationSettings(environment="production").stand_ins_refused
    assert not GenerationSettings(environment="development").stand_ins_refused
    assert GenerationSettings(environment="development", refuse_stand_in_models=True).stand_ins_refused
    assert not GenerationSettings(environment="production", refuse_stand_in_models=False).stand_ins_refused


async def test_refused_stand_ins_are_hidden_cannot_be_bought_and_are_not_quoted(
    gen_platform: Platform, rest: httpx.AsyncClient
) -> None:
    shopper, auth = await _shopper(gen_platform, 5)
    product = await shopper.upload()
    gen_platform.add_env({"STYLESTUDIO_REFUSE_STAND_IN_MODELS": "true"})
    try:
        await _restart(gen_platform, rest)
        listed = (await _once_reconnected(rest, "/v1/models")).json()["models"]
        assert [m["name"] for m in listed] == [REPLICATE_MODEL]
        for model in ("stable-diffusion-xl", "midjourney"):
            body = {"productImageFiles": [product], "prompt": "a coat", "parameters": {"model": model}}
            refused = await rest.post("/v1/generations", json=body, headers=auth)
            error = refused.json()["error"]
            assert (refused.status_code, error["reason"]) == (400, "VALIDATION_ERROR"), error
            assert error["details"] == {"field": "parameters.model", "model": model}
            # Billing's estimate takes the model as a start would: the same refusal, in its words.
            quote = await rest.post("/v1/billing/estimate", json={"model": model})
            quoted = quote.json()["error"]
            assert (quote.status_code, quoted["reason"]) == (400, "VALIDATION_ERROR"), quoted
            assert quoted["details"] == {"field": "model", "model": model}
            assert quoted["message"] == error["message"]
        # The default model is a stand-in too: an estimate naming none is refused as a start would be.
        unnamed = await rest.post("/v1/billing/estimate", json={})
        assert (
            unnamed.status_code == 400
            and unnamed.json()["error"]["details"]["model"] == "stable-diffusion-xl"
        )
        real = await rest.post("/v1/billing/estimate", json={"model": REPLICATE_MODEL, "quality": "draft"})
        assert real.status_code == 200 and int(real.json()["tokens"]) == 1, real.text  # ceil(0.5 x 2.0)
        assert (await shopper.balance()).reserved == 0
    finally:
        gen_platform.add_env({"STYLESTUDIO_REFUSE_STAND_IN_MODELS": "false"})
        await _restart(gen_platform, rest)


async def _restart(platform: Platform, rest: httpx.AsyncClient) -> None:
    """Billing and generation again with the environment as it is now (they read the same
    catalogue settings), once the gateway reaches both."""
    for service in ("billing", "generation"):
        platform.stop(service)
        await platform.start_and_wait(service)
    await _once_reconnected(rest, "/v1/billing/packages")
    await _once_reconnected(rest, "/v1/models")


async def _once_reconnected(rest: httpx.AsyncClient, path: str) -> httpx.Response:
    """The answer once the gateway's channel found the restarted service again."""
    deadline = time.monotonic() + 30
    while (response := await rest.get(path)).status_code == 503:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.2)
    return response
