"""Prompt enhancement: the user's words, then the style preset, then what the service adds."""

from __future__ import annotations

from services.generation.settings import StylePreset

# Said to every model: the product is the subject and must stay recognisable.
SERVICE_ADDITIONS = "the product clearly visible and faithful to the reference photo"
MODEL_ADDITION = "worn by the model from the reference photo"


def enhance_prompt(prompt: str, style: StylePreset, *, with_model_images: bool) -> str:
    parts = [prompt.strip().rstrip(",. ")]
    if style.prompt_suffix:
        parts.append(style.prompt_suffix)
    if with_model_images:
        parts.append(MODEL_ADDITION)
    parts.append(SERVICE_ADDITIONS)
    return ", ".join(part for part in parts if part)
