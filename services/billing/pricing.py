"""What a generation costs: ceil(quality x aspect ratio x model) tokens per image.

The one place prices are decided; the generation service asks through EstimateCost. A model's
factor, and whether it may be chosen, come from the catalogue generation runs
(kit/image_models.py), read from the same settings.
Multipliers are exact decimals (``Decimal(str(x))``) so that e.g. 1.5 x 1.1 x 2.0 is
3.3 and not 3.3000000000000003, and the ceiling never depends on float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from kit.errors import ValidationError, excerpt
from services.billing.settings import BillingSettings, TokenPackage


@dataclass(frozen=True)
class GenerationQuote:
    model: str
    quality: str
    aspect_ratio: str
    num_images: int
    tokens: int


class PriceList:
    def __init__(self, settings: BillingSettings) -> None:
        self._settings = settings
        self._packages = {package.name: package for package in settings.token_packages}

    def estimate(self, model: str, quality: str, aspect_ratio: str, num_images: int) -> GenerationQuote:
        s = self._settings
        # As a start would take it: a stand-in refused where stand-ins are, in the same words.
        image_model = s.chosen_model(model, "model")
        model = image_model.name
        quality = quality or s.default_quality
        aspect_ratio = aspect_ratio or s.default_aspect_ratio
        num_images = num_images or s.default_num_images
        factors = [
            Decimal(str(image_model.multiplier)),
            _multiplier(s.quality_multipliers, quality, "quality"),
            _multiplier(s.aspect_ratio_multipliers, aspect_ratio, "aspect_ratio"),
        ]
        if not 1 <= num_images <= s.max_images_per_generation:
            raise ValidationError(
                f"num_images must be between 1 and {s.max_images_per_generation}", field="num_images"
            )
        per_image = math.ceil(factors[0] * factors[1] * factors[2])
        return GenerationQuote(model, quality, aspect_ratio, num_images, per_image * num_images)

    def packages(self) -> list[TokenPackage]:
        """Cheapest first."""
        return sorted(self._packages.values(), key=lambda p: (p.price_cents, p.name))

    def package(self, name: str) -> TokenPackage:
        package = self._packages.get(name)
        if package is None:
            known = ", ".join(p.name for p in self.packages())
            raise ValidationError(f"Unknown package {excerpt(name)!r}; one of: {known}", field="package_name")
        return package


def _multiplier(table: dict[str, float], value: str, field: str) -> Decimal:
    if value not in table:
        raise ValidationError(f"Unknown {field} {excerpt(value)!r}; one of: {', '.join(table)}", field=field)
    return Decimal(str(table[value]))
