"""The local provider: real images made with Pillow, no network.

It puts the user's product photo (and model photo, if any) on a backdrop painted
in the style's colours, at the requested size; everything random comes from the
seed (and the negative prompt and guidance scale, when set), so the same request and seed
give the same bytes, and another negative prompt another picture.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import random
from collections.abc import Awaitable, Callable

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from services.generation.faults import ProviderFault
from services.generation.providers import (
    OutputImage,
    ProviderRequest,
    Submission,
    permanent,
    transient,
)
from services.generation.settings import GenerationSettings

CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
# Inputs are shrunk before composing; the output never needs more than this.
MAX_INPUT_SIDE = 2048


class LocalProvider:
    name = "local"

    def __init__(
        self,
        settings: GenerationSettings,
        fault_switch: Callable[[], Awaitable[ProviderFault | None]] | None = None,
    ) -> None:
        self._settings = settings
        self._format = settings.local_output_format
        self._random = random.Random()
        # Development only (local_provider_fault_switch): the fault injector's run-time switch.
        self._fault_switch = fault_switch

    async def submit(self, request: ProviderRequest) -> Submission:
        if self._fault_switch is not None and (fault := await self._fault_switch()) is not None:
            if fault.mode == "fail":
                raise transient("The local provider timed out (injected at run time)")
            await asyncio.sleep(fault.seconds)  # stalled or slow
        latency = request.directives.latency_seconds
        if latency is None:
            latency = self._settings.local_provider_latency_seconds
        if latency > 0:
            await asyncio.sleep(latency)
        self._inject_failures(request)
        outputs = await asyncio.to_thread(self.render, request)
        return Submission(outputs=outputs)

    async def check(self, prediction_id: str) -> Submission:
        raise permanent("the local provider has no running predictions")

    async def cancel(self, prediction_id: str) -> None:
        return None

    def _inject_failures(self, request: ProviderRequest) -> None:
        directives = request.directives
        if directives.fail_permanently:
            raise permanent("The local provider was told to fail")
        if request.try_number <= directives.transient_failures:
            raise transient("The local provider timed out (injected)")
        if self._random.random() < self._settings.local_provider_failure_rate:
            raise permanent("The local provider failed (injected)")
        if self._random.random() < self._settings.local_provider_transient_failure_rate:
            raise transient("The local provider timed out (injected)")

    def render(self, request: ProviderRequest) -> list[OutputImage]:
        products = [_open(content) for content in request.product_images]
        models = [_open(content) for content in request.model_images]
        content_type = CONTENT_TYPES[self._format]
        return [
            OutputImage(self._encode(_compose(request, products, models, index)), content_type)
            for index in range(request.num_images)
        ]

    def _encode(self, image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format=self._format, quality=88)
        return out.getvalue()


def _open(content: bytes) -> Image.Image:
    try:
        image: Image.Image = Image.open(io.BytesIO(content))
        image.draft("RGB", (MAX_INPUT_SIDE, MAX_INPUT_SIDE))
        # RGBA only for photos with transparency: an opaque photo stays RGB until it is shrunk
        # (resizing RGBA costs premultiplying and back, ~40 % of a draft's render).
        image = ImageOps.exif_transpose(image.convert("RGBA" if image.has_transparency_data else "RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise permanent(f"An input image could not be read: {error}") from error
    image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE))
    return image


def _fitted(image: Image.Image, width: int, height: int) -> Image.Image:
    """A copy shrunk to fit width x height, as RGBA (for alpha_composite)."""
    fitted = image.copy()
    fitted.thumbnail((max(1, width), max(1, height)))
    return fitted if fitted.mode == "RGBA" else fitted.convert("RGBA")


def _compose(
    request: ProviderRequest, products: list[Image.Image], models: list[Image.Image], index: int
) -> Image.Image:
    rng = random.Random(_randomness(request, index))
    width, height = request.width, request.height
    canvas = _backdrop(width, height, request.style.backdrop, rng)
    if models:
        figure = _fitted(models[index % len(models)], int(width * 0.45), int(height * 0.9))
        canvas.alpha_composite(figure, (int(width * 0.05), height - figure.height - int(height * 0.05)))
    scale = rng.uniform(0.5, 0.7)
    product = _fitted(products[index % len(products)], int(width * scale), int(height * scale))
    left = (width - product.width) // 2 + (int(width * 0.15) if models else 0)
    left = min(max(0, left + rng.randint(-width // 20, width // 20)), width - product.width)
    top = (height - product.height) // 2 + rng.randint(-height // 20, height // 20)
    top = min(max(0, top), height - product.height)
    _shadow(canvas, left, top, product.width, product.height)
    canvas.alpha_composite(product, (left, top))
    return canvas.convert("RGB")


def _randomness(request: ProviderRequest, index: int) -> int:
    """The picture's seed: the request's seed, mixed with the negative prompt and guidance when set
    (so each changes the picture visibly, and the same inputs still give the same bytes)."""
    base = request.seed * 31 + index
    if not request.negative_prompt and request.guidance_scale is None:
        return base
    material = f"{base}\0{request.negative_prompt}\0{request.guidance_scale!r}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big")


@functools.lru_cache(maxsize=64)
def _gradient(width: int, height: int, colours: tuple[str, str]) -> Image.Image:
    """The style's gradient at one size: the same for every seed, so painted once (kept, never drawn on)."""
    top, bottom = Image.new("RGBA", (1, 1), colours[0]), Image.new("RGBA", (1, 1), colours[1])
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.composite(bottom.resize((width, height)), top.resize((width, height)), gradient)


def _backdrop(width: int, height: int, colours: tuple[str, str], rng: random.Random) -> Image.Image:
    canvas = _gradient(width, height, colours).copy()
    draw = ImageDraw.Draw(canvas, "RGBA")
    for _ in range(rng.randint(2, 5)):
        radius = rng.randint(min(width, height) // 8, max(width, height) // 2)
        x, y = rng.randint(0, width), rng.randint(0, height)
        shade = rng.randint(0, 255)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(shade, shade, shade, 18))
    return canvas


def _shadow(canvas: Image.Image, left: int, top: int, width: int, height: int) -> None:
    draw = ImageDraw.Draw(canvas, "RGBA")
    floor = top + height
    draw.ellipse(
        (left + width * 0.1, floor - height * 0.04, left + width * 0.9, floor + height * 0.04),
        fill=(0, 0, 0, 60),
    )
