"""The generation service's pure rules: validation, defaults, prompts, lifecycle, local images."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from kit.errors import FailedPrecondition, ValidationError
from services.generation import faults
from services.generation.catalog import Catalog
from services.generation.lifecycle import Status, can_move, check_cancelable, sources_of
from services.generation.prompts import enhance_prompt
from services.generation.providers import ProviderRequest
from services.generation.providers.local import LocalProvider
from services.generation.settings import GenerationSettings
from services.generation.validation import validate_request

SETTINGS = GenerationSettings()
CATALOG = Catalog.from_settings(SETTINGS)
FILE = "3f6c1f0e-1d1e-4c55-9d5e-0b8a1f0c2a11"


def request(**overrides: object):
    values: dict[str, object] = {
        "product_image_files": [FILE],
        "model_image_files": [],
        "prompt": "a red dress",
        "model": "",
        "style": "",
        "quality": "",
        "aspect_ratio": "",
        "num_images": 0,
        "seed": None,
    }
    values.update(overrides)
    return validate_request(**values, catalog=CATALOG, settings=SETTINGS)  # type: ignore[arg-type]


def test_defaults_fill_everything_left_out() -> None:
    parameters = request().parameters
    assert (parameters.model, parameters.style, parameters.quality) == (
        "stable-diffusion-xl",
        "realistic",
        "standard",
    )
    assert (parameters.aspect_ratio, parameters.num_images, parameters.seed) == ("1:1", 1, None)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "gpt-image"}, "parameters.model"),
        ({"style": "baroque"}, "parameters.style"),
        ({"quality": "ultra"}, "parameters.quality"),
        ({"aspect_ratio": "4:3"}, "parameters.aspect_ratio"),
        ({"num_images": 5}, "parameters.num_images"),
        ({"num_images": -1}, "parameters.num_images"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"product_image_files": []}, "product_image_files"),
        ({"product_image_files": [FILE] * 2}, "product_image_files"),
        ({"product_image_files": [f"{FILE[:-1]}{i}" for i in range(6)]}, "product_image_files"),
        ({"model_image_files": [f"{FILE[:-1]}{i}" for i in range(4)]}, "model_image_files"),
        ({"model_image_files": [FILE]}, "model_image_files"),
        ({"product_image_files": [""]}, "product_image_files"),
        ({"seed": -5}, "parameters.seed"),
    ],
)
def test_bad_parameters_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request(**overrides)
    assert caught.value.details["field"] == field


def test_prompt_is_enhanced_with_the_style_and_the_model() -> None:
    style = CATALOG.styles["fashion"]
    enhanced = enhance_prompt("a red dress.", style, with_model_images=True)
    assert enhanced.startswith("a red dress, high fashion photography")
    assert "worn by the model" in enhanced


def test_catalog_has_the_styles_and_models_of_the_contract() -> None:
    assert {"realistic", "fashion", "studio", "lifestyle", "editorial", "minimalist"} <= set(CATALOG.styles)
    assert {m.name: m.multiplier for m in CATALOG.models.values()} == {
        "stable-diffusion-xl": 1.0,
        "dall-e-3": 2.0,
        "midjourney": 1.5,
    }


@pytest.mark.parametrize(
    ("quality", "ratio", "size"),
    [("draft", "1:1", (512, 512)), ("standard", "16:9", (1024, 576)), ("high", "2:3", (1024, 1536))],
)
def test_output_size_follows_quality_and_aspect_ratio(
    quality: str, ratio: str, size: tuple[int, int]
) -> None:
    assert CATALOG.output_size(quality, ratio) == size


def test_lifecycle_moves() -> None:
    assert can_move(Status.QUEUED, Status.PROCESSING)
    assert not can_move(Status.COMPLETED, Status.FAILED)
    assert not can_move(Status.STARTING, Status.PROCESSING)
    assert sources_of(Status.CANCELED) == {Status.QUEUED, Status.PROCESSING}


def test_cancel_rules() -> None:
    assert check_cancelable(Status.QUEUED, None)
    assert check_cancelable(Status.PROCESSING, None)
    assert not check_cancelable(Status.CANCELED, None)
    assert not check_cancelable(Status.PROCESSING, Status.CANCELED)
    for status, resolution in [
        (Status.COMPLETED, None),
        (Status.FAILED, None),
        (Status.PROCESSING, Status.COMPLETED),
    ]:
        with pytest.raises(FailedPrecondition):
            check_cancelable(status, resolution)


def test_fault_directives_only_when_enabled() -> None:
    prompt = "dress [fail:transient:2] [latency:0.5] [pause:after_store] [pause:nowhere]"
    assert faults.parse_directives(prompt, enabled=False) == faults.NONE
    directives = faults.parse_directives(prompt, enabled=True)
    assert directives.transient_failures == 2 and directives.latency_seconds == 0.5
    assert directives.pauses == {"after_store"} and not directives.fail_permanently


def _png(colour: str, size: tuple[int, int] = (300, 400)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _provider_request(seed: int, **overrides: object) -> ProviderRequest:
    values: dict[str, object] = {
        "generation_id": "g",
        "prompt": "p",
        "model": CATALOG.models["stable-diffusion-xl"],
        "style": CATALOG.styles["studio"],
        "width": 576,
        "height": 1024,
        "aspect_ratio": "9:16",
        "num_images": 2,
        "seed": seed,
        "product_images": [_png("red")],
        "model_images": [_png("blue", (200, 500))],
    }
    values.update(overrides)
    return ProviderRequest(**values)  # type: ignore[arg-type]


def test_local_provider_renders_real_images_deterministic_per_seed() -> None:
    provider = LocalProvider(SETTINGS)
    first = provider.render(_provider_request(7))
    again = provider.render(_provider_request(7))
    other = provider.render(_provider_request(8))
    assert [o.content for o in first] == [o.content for o in again]
    assert first[0].content != other[0].content
    assert first[0].content != first[1].content
    with Image.open(io.BytesIO(first[0].content)) as image:
        assert image.format == "JPEG" and image.size == (576, 1024)
