"""What makes a generation request acceptable, and the defaults it gets."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from kit.errors import ValidationError, excerpt
from services.generation.catalog import Catalog
from services.generation.settings import GenerationSettings

# Seeds travel as int64 and many image models take 32-bit seeds.
MAX_SEED = 2**32 - 1
MAX_FILE_ID_LENGTH = 64


@dataclass(frozen=True)
class Parameters:
    model: str
    style: str
    quality: str
    aspect_ratio: str
    num_images: int
    seed: int | None
    # Empty: none. Only for models whose ImageModel.parameters lists them.
    negative_prompt: str = ""
    guidance_scale: float | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request with its defaults filled in."""

    product_image_files: tuple[str, ...]
    model_image_files: tuple[str, ...]
    prompt: str
    parameters: Parameters

    @property
    def input_files(self) -> tuple[str, ...]:
        return self.product_image_files + self.model_image_files


def validate_request(
    *,
    product_image_files: list[str],
    model_image_files: list[str],
    prompt: str,
    model: str,
    style: str,
    quality: str,
    aspect_ratio: str,
    num_images: int,
    seed: int | None,
    negative_prompt: str = "",
    guidance_scale: float | None = None,
    catalog: Catalog,
    settings: GenerationSettings,
) -> GenerationRequest:
    """The request with defaults applied, or ValidationError naming the first bad field."""
    prompt = prompt.strip()
    if not prompt:
        raise ValidationError("A prompt is required", field="prompt")
    if len(prompt) > settings.max_prompt_length:
        raise ValidationError(
            f"The prompt is longer than {settings.max_prompt_length} characters",
            field="prompt",
            details={"max_length": settings.max_prompt_length},
        )
    products = _file_ids(
        product_image_files, "product_image_files", settings.min_product_images, settings.max_product_images
    )
    models = _file_ids(model_image_files, "model_image_files", 0, settings.max_model_images)
    if set(products) & set(models):
        raise ValidationError(
            "A file cannot be both a product image and a model image", field="model_image_files"
        )
    model = _model(model, settings)
    parameters = Parameters(
        model=model,
        style=_choice(style or settings.default_style, catalog.styles, "parameters.style"),
        quality=_choice(quality or settings.default_quality, catalog.qualities, "parameters.quality"),
        aspect_ratio=_choice(
            aspect_ratio or settings.default_aspect_ratio, catalog.aspect_ratios, "parameters.aspect_ratio"
        ),
        num_images=_num_images(num_images or settings.default_num_images, settings.max_images_per_generation),
        seed=_seed(seed),
        negative_prompt=_negative_prompt(negative_prompt, settings),
        guidance_scale=_guidance_scale(guidance_scale, settings),
    )
    _taken_by_model(parameters, catalog.models[model].parameters)
    return GenerationRequest(products, models, prompt, parameters)


def _file_ids(ids: list[str], field: str, least: int, most: int) -> tuple[str, ...]:
    if not least <= len(ids) <= most:
        raise ValidationError(
            f"Between {least} and {most} {field.replace('_', ' ')} are allowed, got {len(ids)}",
            field=field,
            details={"min": least, "max": most},
        )
    for file_id in ids:
        if not file_id or len(file_id) > MAX_FILE_ID_LENGTH or not file_id.isprintable():
            raise ValidationError(f"{file_id[:MAX_FILE_ID_LENGTH]!r} is not a file id", field=field)
    if len(set(ids)) != len(ids):
        raise ValidationError("The same file is listed twice", field=field)
    return tuple(ids)


def _choice(value: str, allowed: object, field: str) -> str:
    if value not in allowed:  # type: ignore[operator]
        options = ", ".join(sorted(allowed))  # type: ignore[call-overload]
        raise ValidationError(
            f"Unknown {field.split('.')[-1]} {excerpt(value)!r}; one of: {options}", field=field
        )
    return value


def _num_images(value: int, most: int) -> int:
    if not 1 <= value <= most:
        raise ValidationError(
            f"num_images must be between 1 and {most}", field="parameters.num_images", details={"max": most}
        )
    return value


def _seed(seed: int | None) -> int | None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValidationError(f"seed must be between 0 and {MAX_SEED}", field="parameters.seed")
    return seed


def _model(name: str, settings: GenerationSettings) -> str:
    """A model of the catalogue; a stand-in (drawn by the local provider) only where allowed:
    the rule billing's estimate applies too (kit/image_models.py)."""
    return settings.chosen_model(name, "parameters.model").name


def _negative_prompt(text: str, settings: GenerationSettings) -> str:
    text = text.strip()
    if len(text) > settings.max_negative_prompt_length:
        raise ValidationError(
            f"The negative prompt is longer than {settings.max_negative_prompt_length} characters",
            field="parameters.negative_prompt",
            details={"max_length": settings.max_negative_prompt_length},
        )
    return text


def _guidance_scale(value: float | None, settings: GenerationSettings) -> float | None:
    least, most = settings.guidance_scale_range
    if value is not None and not least <= value <= most:  # NaN fails too
        raise ValidationError(
            f"guidance_scale must be between {least:g} and {most:g}",
            field="parameters.guidance_scale",
            details={"min": least, "max": most},
        )
    return value


def _taken_by_model(parameters: Parameters, taken: Collection[str]) -> None:
    """A parameter set for a model that does not take it is refused, not silently dropped."""
    given = {
        "negativePrompt": ("parameters.negative_prompt", bool(parameters.negative_prompt)),
        "guidanceScale": ("parameters.guidance_scale", parameters.guidance_scale is not None),
    }
    for name, (field, is_set) in given.items():
        if is_set and name not in taken:
            raise ValidationError(
                f"The model {parameters.model!r} does not take {name}",
                field=field,
                details={"model": parameters.model, "parameter": name},
            )
