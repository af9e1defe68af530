"""Pricing: ceil(quality x aspect ratio x model) per image, from configuration."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError as PydanticValidationError

from kit.errors import ValidationError
from kit.image_models import ImageModel
from services.billing.pricing import PriceList
from services.billing.settings import BillingSettings
from services.generation.settings import GenerationSettings
from stylestudio.billing.v1 import billing_pb2

PRICES = PriceList(BillingSettings())


@pytest.mark.parametrize(
    ("model", "quality", "aspect", "images", "tokens"),
    [
        ("", "", "", 0, 1),
        ("stable-diffusion-xl", "draft", "1:1", 1, 1),
        ("stable-diffusion-xl", "standard", "3:2", 1, 2),
        ("dall-e-3", "high", "2:3", 1, 4),  # 1.5 x 1.1 x 2.0 = 3.3 -> 4
        ("dall-e-3", "draft", "1:1", 1, 1),  # exactly 1.0
        ("midjourney", "high", "16:9", 2, 6),  # 2.7 -> 3, per image
        ("dall-e-3", "standard", "9:16", 4, 12),
    ],
)
def test_the_seed_prices(model: str, quality: str, aspect: str, images: int, tokens: int) -> None:
    assert PRICES.estimate(model, quality, aspect, images).tokens == tokens


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("flux", "", "", 1), "model"),
        (("", "ultra", "", 1), "quality"),
        (("", "", "4:3", 1), "aspect_ratio"),
        (("", "", "", 99), "num_images"),
    ],
)
def test_unknown_values_name_their_field(args: tuple[str, str, str, int], field: str) -> None:
    with pytest.raises(ValidationError) as failure:
        PRICES.estimate(*args)
    assert failure.value.details["field"] == field


def test_multipliers_and_packages_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The model's multiplier is the catalogue's, the one generation runs (kit/image_models.py).
    monkeypatch.setenv(
        "STYLESTUDIO_IMAGE_MODELS", '[{"name": "flux", "display_name": "Flux", "multiplier": 3.0}]'
    )
    monkeypatch.setenv(
        "STYLESTUDIO_TOKEN_PACKAGES",
        '[{"name": "mini", "display_name": "Mini", "tokens": 3, "price_cents": 99}]',
    )
    prices = PriceList(BillingSettings())
    assert prices.estimate("flux", "", "", 1).tokens == 3
    assert [p.name for p in prices.packages()] == ["mini"]


def test_an_estimate_refuses_a_stand_in_as_a_start_would_and_prices_real_models_alone() -> None:
    catalogue = [
        ImageModel(name="flux", display_name="Flux", multiplier=3.0, provider="replicate"),
        ImageModel(name="dall-e-3", display_name="DALL-E 3", multiplier=2.0),  # drawn locally
    ]
    refusing = BillingSettings(image_models=catalogue, default_model="flux", refuse_stand_in_models=True)
    generation = GenerationSettings(image_models=catalogue, default_model="flux", refuse_stand_in_models=True)
    prices = PriceList(refusing)
    assert prices.estimate("", "", "", 1).tokens == 3 == prices.estimate("flux", "", "", 1).tokens
    with pytest.raises(ValidationError) as quoted:
        prices.estimate("dall-e-3", "", "", 1)
    with pytest.raises(ValidationError) as started:
        generation.chosen_model("dall-e-3", "parameters.model")
    assert quoted.value.details == {"field": "model", "model": "dall-e-3"}
    assert (
        quoted.value.message
        == started.value.message
        == ("The model 'dall-e-3' is not available here: no provider runs it")
    )
    with pytest.raises(ValidationError) as unknown:
        prices.estimate("midjourney", "", "", 1)
    assert unknown.value.message == "Unknown model 'midjourney'; one of: flux"
    # Development offers stand-ins unless told otherwise: quoted like any model.
    assert PriceList(BillingSettings(image_models=catalogue)).estimate("dall-e-3", "", "", 1).tokens == 2


def test_qualities_ratios_and_defaults_are_one_set_for_both_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a start may ask and what an estimate prices come from the same variables: a ratio
    added is offered by generation and priced by billing, a default applies to both."""
    monkeypatch.setenv("STYLESTUDIO_ASPECT_RATIO_MULTIPLIERS", '{"1:1": 1.0, "4:5": 1.3}')
    monkeypatch.setenv("STYLESTUDIO_DEFAULT_NUM_IMAGES", "2")
    generation, billing = GenerationSettings(), BillingSettings()
    assert generation.aspect_ratios == ["1:1", "4:5"]
    assert PriceList(billing).estimate("stable-diffusion-xl", "standard", "4:5", 0).tokens == 2 * 2
    assert generation.default_num_images == billing.default_num_images == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STYLESTUDIO_QUALITY_MULTIPLIERS", '{"draft": 0.5, "standard": 1.0, "high": 1.5, "ultra": 3}'),
        ("STYLESTUDIO_DEFAULT_ASPECT_RATIO", "4:3"),
        ("STYLESTUDIO_ASPECT_RATIO_MULTIPLIERS", '{"1:1": 1.0, "wide": 1.2}'),
        ("STYLESTUDIO_DEFAULT_NUM_IMAGES", "5"),
    ],
)
def test_options_that_do_not_agree_stop_both_services(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A quality priced but with no size, a default not on offer, a malformed ratio, a default
    count over the maximum: refused by both processes at start-up rather than drifting apart."""
    monkeypatch.setenv(variable, value)
    for settings in (GenerationSettings, BillingSettings):
        with pytest.raises(PydanticValidationError):
            settings()


async def test_packages_and_estimates_over_grpc_are_public(public) -> None:
    packages = await public.ListPackages(billing_pb2.ListPackagesRequest())
    assert [(p.name, p.tokens, p.price_cents, p.currency) for p in packages.packages] == [
        ("starter", 10, 299, "usd"),
        ("standard", 50, 999, "usd"),
        ("pro", 200, 2999, "usd"),
        ("enterprise", 1000, 9999, "usd"),
    ]
    estimate = await public.EstimateCost(
        billing_pb2.EstimateCostRequest(model="dall-e-3", quality="high", aspect_ratio="16:9", num_images=2)
    )
    assert estimate.tokens == 8  # ceil(3.6) x 2
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.EstimateCost(billing_pb2.EstimateCostRequest(num_images=-1))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
