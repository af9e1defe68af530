"""The styles and image models users can choose, from configuration."""

from __future__ import annotations

from dataclasses import dataclass

from services.generation.settings import GenerationSettings, ImageModel, StylePreset


@dataclass(frozen=True)
class Catalog:
    styles: dict[str, StylePreset]
    models: dict[str, ImageModel]
    qualities: dict[str, int]
    aspect_ratios: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: GenerationSettings) -> Catalog:
        return cls(
            styles={style.name: style for style in settings.styles},
            models={model.name: model for model in settings.image_models},
            qualities=dict(settings.quality_resolutions),
            aspect_ratios=tuple(settings.aspect_ratios),
        )

    def output_size(self, quality: str, aspect_ratio: str) -> tuple[int, int]:
        """Width and height of an output image: the quality's long side at the aspect ratio."""
        long_side = self.qualities[quality]
        width_part, height_part = (int(part) for part in aspect_ratio.split(":"))
        if width_part >= height_part:
            return long_side, round(long_side * height_part / width_part)
        return round(long_side * width_part / height_part), long_side
