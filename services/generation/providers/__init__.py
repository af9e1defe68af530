"""AI image providers behind one interface, chosen per model by configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kit.errors import Reason
from services.generation.faults import NONE, Directives
from services.generation.settings import ImageModel, StylePreset


@dataclass(frozen=True)
class OutputImage:
    content: bytes
    content_type: str


@dataclass(frozen=True)
class ProviderRequest:
    generation_id: str
    prompt: str
    model: ImageModel
    style: StylePreset
    width: int
    height: int
    aspect_ratio: str
    num_images: int
    seed: int
    product_images: list[bytes]
    model_images: list[bytes]
    # Empty / None: not set (only models whose ImageModel.parameters lists them get them).
    negative_prompt: str = ""
    guidance_scale: float | None = None
    # 1 for the first try of this worker run, more when a transient error is retried.
    try_number: int = 1
    directives: Directives = NONE


@dataclass(frozen=True)
class Submission:
    """What a provider answered: the images, or a prediction still running elsewhere."""

    outputs: list[OutputImage] = field(default_factory=list)
    prediction_id: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.outputs)


class ProviderError(Exception):
    """The provider could not produce images. Transient ones are worth another try."""

    def __init__(self, message: str, *, reason: Reason, transient: bool) -> None:
        super().__init__(message)
        self.message, self.reason, self.transient = message, reason, transient


def transient(message: str) -> ProviderError:
    return ProviderError(message, reason=Reason.PROVIDER_UNAVAILABLE, transient=True)


def permanent(message: str, reason: Reason = Reason.PROCESSING_ERROR) -> ProviderError:
    return ProviderError(message, reason=reason, transient=False)


class Provider(Protocol):
    name: str

    async def submit(self, request: ProviderRequest) -> Submission:
        """Start (and for synchronous providers finish) producing the images."""
        ...

    async def check(self, prediction_id: str) -> Submission:
        """Where a running prediction is: its outputs once done; raises ProviderError if it failed."""
        ...

    async def cancel(self, prediction_id: str) -> None: ...
