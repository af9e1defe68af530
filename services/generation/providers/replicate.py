"""The Replicate provider, through the official ``replicate`` SDK.

A prediction is created with the model's configured version, a webhook URL and
``webhook_events_filter=["completed"]``; Replicate calls the webhook (verified
with its signing secret, see ``webhooks.py``) and, when no webhook arrives, the
sweeper's poll checks the prediction. The base URL is configurable, so tests run
against a local server that speaks Replicate's API.
"""

from __future__ import annotations

import io
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import replicate
from PIL import Image, UnidentifiedImageError
from replicate.exceptions import ReplicateError

from kit.errors import Reason
from services.generation.providers import (
    OutputImage,
    ProviderError,
    ProviderRequest,
    Submission,
    permanent,
    transient,
)
from services.generation.settings import GenerationSettings

RUNNING_STATUSES = ("starting", "processing")


class ReplicateProvider:
    name = "replicate"

    def __init__(self, settings: GenerationSettings) -> None:
        self._settings = settings
        timeout = httpx.Timeout(settings.replicate_timeout_seconds)
        self._client = replicate.Client(
            api_token=settings.replicate_api_token.get_secret_value() or None,
            base_url=settings.replicate_base_url,
            timeout=timeout,
        )
        self._downloads = httpx.AsyncClient(timeout=timeout, follow_redirects=True)

    async def submit(self, request: ProviderRequest) -> Submission:
        inputs: dict[str, object] = {
            "prompt": request.prompt,
            "image": _named_image(request.product_images[0]),
            "num_outputs": request.num_images,
            "aspect_ratio": request.aspect_ratio,
            "width": request.width,
            "height": request.height,
            "seed": request.seed,
        }
        # The SDXL family's inputs; sent only when the request set them (validation let only
        # the models that take them through).
        if request.negative_prompt:
            inputs["negative_prompt"] = request.negative_prompt
        if request.guidance_scale is not None:
            inputs["guidance_scale"] = request.guidance_scale
        params: dict[str, Any] = {}
        if url := self._settings.replicate_webhook_url:
            params = {
                # The generation rides in the URL (Replicate's advice for metadata), so a webhook
                # about a prediction whose id a crash kept us from saving still finds it.
                "webhook": _with_query(url, generation_id=request.generation_id),
                # "start" too: a duplicate prediction is cancelled as it starts, not paid to the end.
                "webhook_events_filter": ["start", "completed"],
            }
        try:
            prediction = await self._client.predictions.async_create(
                version=request.model.replicate_version,
                input=inputs,
                file_encoding_strategy="base64",
                **params,
            )
        except (ReplicateError, httpx.HTTPError) as error:
            raise _classify(error) from error
        return Submission(prediction_id=prediction.id)

    async def check(self, prediction_id: str) -> Submission:
        try:
            prediction = await self._client.predictions.async_get(prediction_id)
        except (ReplicateError, httpx.HTTPError) as error:
            raise _classify(error) from error
        if prediction.status in RUNNING_STATUSES:
            return Submission(prediction_id=prediction_id)
        if prediction.status != "succeeded":
            raise permanent(f"The prediction {prediction.status}: {prediction.error or 'no detail'}")
        urls = prediction.output if isinstance(prediction.output, list) else [prediction.output]
        return Submission(outputs=[await self._download(str(url)) for url in urls if url])

    async def cancel(self, prediction_id: str) -> None:
        try:
            await self._client.predictions.async_cancel(prediction_id)
        except (ReplicateError, httpx.HTTPError) as error:
            raise _classify(error) from error

    async def _download(self, url: str) -> OutputImage:
        limit = self._settings.max_output_bytes
        try:
            async with self._downloads.stream("GET", url) as response:
                if response.status_code >= 500:
                    raise transient(f"Downloading an output failed with HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise permanent(f"Downloading an output failed with HTTP {response.status_code}")
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if len(content) > limit:
                        raise permanent("An output image is larger than allowed")
                return OutputImage(bytes(content), response.headers.get("content-type", ""))
        except httpx.HTTPError as error:
            raise transient(f"Downloading an output failed: {type(error).__name__}") from error


def _with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to (or replacing the same names in) its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def _named_image(content: bytes) -> io.BytesIO:
    """The product photo as a file whose name tells the SDK its type (its data URL says image/...)."""
    image = io.BytesIO(content)
    try:
        with Image.open(io.BytesIO(content)) as opened:
            extension = (opened.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        extension = "png"
    image.name = f"product.{extension}"
    return image


def _classify(error: Exception) -> ProviderError:
    """Timeouts, 5xx and rate limits are worth retrying; other refusals are not."""
    if isinstance(error, ReplicateError):
        status = error.status or 0
        if status == 429 or status >= 500:
            return transient(f"Replicate answered {status}")
        return ProviderError(
            f"Replicate refused the prediction ({status})", reason=Reason.PROCESSING_ERROR, transient=False
        )
    return transient(f"Replicate did not answer: {type(error).__name__}")
