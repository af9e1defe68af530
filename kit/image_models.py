"""The image models on offer: one catalogue, which generation runs and billing prices.

Both services read it from the same variables (``STYLESTUDIO_IMAGE_MODELS``, JSON;
``STYLESTUDIO_DEFAULT_MODEL``; ``STYLESTUDIO_REFUSE_STAND_IN_MODELS``), so a model's multiplier,
and whether a stand-in may be chosen, are decided once: an estimate quotes exactly what a start
would charge, and refuses what a start would refuse, with the same words.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
