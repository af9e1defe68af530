"""The image models on offer, and what else a generation may ask for: one catalogue, which
generation runs and billing prices.

Both services read it from the same variables (``STYLESTUDIO_IMAGE_MODELS``, JSON;
``STYLESTUDIO_DEFAULT_MODEL``; ``STYLESTUDIO_REFUSE_STAND_IN_MODELS``; the qualities, aspect
ratios, defaults and image count below), so a model's multiplier, whether a stand-in may be
chosen, which qualities and aspect ratios exist and what a request that leaves them out gets
are decided once: an estimate quotes exactly what a start would charge, and refuses what a
start would refuse, with the same words.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from kit.errors import ValidationError, excerpt
from kit.settings import ServiceSettings

# Parameters every model takes (GenerationParameters' JSON names), and those only some do.
COMMON_PARAMETERS = ("model", "style", "quality", "aspectRatio", "numImages", "seed")
OPTIONAL_PARAMETERS = ("negativePrompt", "guidanceScale")


class ImageModel(BaseModel):
    name: str
    display_name: str
    # Its price factor: tokens per image are ceil(quality x aspect ratio x this) (billing).
    multiplier: float
    # Which provider runs it: "local" or "replicate". "local" draws a stand-in picture.
    provider: str = "local"
    # The Replicate model version id, for provider "replicate".
    replicate_version: str = ""
    # Which of OPTIONAL_PARAMETERS it takes (Replicate's SDXL family: negative_prompt and
    # guidance_scale); a request setting another is refused.
    parameters: list[Literal["negativePrompt", "guidanceScale"]] = []

    @property
    def stand_in(self) -> bool:
        """The local provider draws it: not the real model's picture."""
        return self.provider == "local"

    @property
    def accepted_parameters(self) -> list[str]:
        return [*COMMON_PARAMETERS, *(name for name in OPTIONAL_PARAMETERS if name in self.parameters)]


DEFAULT_MODELS = [
    ImageModel(
        name="stable-diffusion-xl",
        display_name="Stable Diffusion XL",
        multiplier=1.0,
        parameters=["negativePrompt", "guidanceScale"],
    ),
    # DALL-E 3 takes neither; Midjourney's "--no" is a negative prompt.
    ImageModel(name="dall-e-3", display_name="DALL-E 3", multiplier=2.0),
    ImageModel(name="midjourney", display_name="Midjourney", multiplier=1.5, parameters=["negativePrompt"]),
]


class ImageModelSettings(ServiceSettings):
    """The settings of a service that offers the catalogue (generation) or prices it (billing)."""

    image_models: list[ImageModel] = Field(default_factory=lambda: list(DEFAULT_MODELS))
    # The model of a request that names none (API.md).
    default_model: str = "stable-diffusion-xl"
    # Models the local provider draws (ImageModel.stand_in) are left out of ListModels, refused
    # at creation and not quoted, so nobody pays a real model's multiplier for a stand-in's
    # picture. Unset: refused in production, offered in development.
    refuse_stand_in_models: bool | None = None

    # Each quality's price factor (billing) and output size, the long side in pixels
    # (generation): the same qualities in both, which the validator below holds to.
    quality_multipliers: dict[str, float] = {"draft": 0.5, "standard": 1.0, "high": 1.5}
    quality_resolutions: dict[str, int] = {"draft": 512, "standard": 1024, "high": 1536}
    # The aspect ratios on offer and each one's price factor.
    aspect_ratio_multipliers: dict[str, float] = {
        "1:1": 1.0,
        "16:9": 1.2,
        "9:16": 1.2,
        "3:2": 1.1,
        "2:3": 1.1,
    }
    # What a request that leaves them out gets (API.md), and how many images one may ask for.
    default_quality: str = "standard"
    default_aspect_ratio: str = "1:1"
    default_num_images: int = Field(default=1, ge=1)
    max_images_per_generation: int = Field(default=4, ge=1)

    @property
    def aspect_ratios(self) -> list[str]:
        return list(self.aspect_ratio_multipliers)

    @model_validator(mode="after")
    def _one_set_of_options(self) -> ImageModelSettings:
        """Prices and sizes for the same qualities, and defaults among the options: a process
        given a quality without its price, or a default that is not offered, does not start."""
        if set(self.quality_multipliers) != set(self.quality_resolutions):
            raise ValueError(
                "quality_multipliers and quality_resolutions must name the same qualities: "
                f"{sorted(self.quality_multipliers)} != {sorted(self.quality_resolutions)}"
            )
        for ratio in self.aspect_ratio_multipliers:
            width, _, height = ratio.partition(":")
            if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
                raise ValueError(f"aspect ratio {ratio!r} is not <width>:<height>")
        if self.default_quality not in self.quality_multipliers:
            raise ValueError(f"default_quality {self.default_quality!r} is not one of the qualities")
        if self.default_aspect_ratio not in self.aspect_ratio_multipliers:
            raise ValueError(f"default_aspect_ratio {self.default_aspect_ratio!r} is not one of the ratios")
        if self.default_num_images > self.max_images_per_generation:
            raise ValueError("default_num_images is over max_images_per_generation")
        return self

    @property
    def stand_ins_refused(self) -> bool:
        if self.refuse_stand_in_models is None:
            return self.is_production
        return self.refuse_stand_in_models

    def offered_models(self) -> dict[str, ImageModel]:
        """The models a request may name here, by name, in the catalogue's order."""
        refused = self.stand_ins_refused
        return {model.name: model for model in self.image_models if not (refused and model.stand_in)}

    def chosen_model(self, name: str, field: str) -> ImageModel:
        """The model a request names in ``field`` (empty: the default); a VALIDATION_ERROR naming
        ``field`` for a stand-in where they are refused (with ``details.model``) or an unknown name."""
        name = name or self.default_model
        offered = self.offered_models()
        if name in offered:
            return offered[name]
        if any(model.name == name for model in self.image_models):
            raise ValidationError(
                f"The model {name!r} is not available here: no provider runs it",
                field=field,
                details={"model": name},
            )
        options = ", ".join(sorted(offered))
        raise ValidationError(f"Unknown model {excerpt(name)!r}; one of: {options}", field=field)
