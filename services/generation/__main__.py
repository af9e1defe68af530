"""Start the generation service: ``python -m services.generation``."""

from __future__ import annotations

import functools
from collections.abc import Coroutine, Sequence
from typing import Any

from kit.events import EventConsumer
from kit.server import Registration, Runtime, ServiceDefinition, run
from services.generation import api, models, monitoring
from services.generation.faults import read_provider_fault
from services.generation.providers import Provider
from services.generation.providers.local import LocalProvider
from services.generation.providers.replicate import ReplicateProvider
from services.generation.saga import Saga
from services.generation.settings import GenerationSettings
from services.generation.sweeper import sweep_forever
from services.generation.worker import job_consumer


class GenerationService:
    """Builds the saga once the kit has its runtime, and hands its parts to the kit."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings
        self.saga: Saga | None = None

    def register(self, runtime: Runtime) -> Sequence[Registration]:
        switch = None
        if self.settings.local_provider_fault_switch:
            switch = functools.partial(read_provider_fault, runtime.redis, self.settings.redis_prefix)
        providers: dict[str, Provider] = {"local": LocalProvider(self.settings, switch)}
        if any(model.provider == "replicate" for model in self.settings.image_models):
            providers["replicate"] = ReplicateProvider(self.settings)
        self.saga = Saga(runtime, self.settings, providers)
        monitoring.watch(runtime.metrics, runtime.db)
        return api.registrations(self.saga)

    def consumers(self, runtime: Runtime) -> Sequence[EventConsumer]:
        assert self.saga is not None
        return [job_consumer(self.saga)]

    def background(self, runtime: Runtime) -> Sequence[Coroutine[Any, Any, None]]:
        assert self.saga is not None
        return [sweep_forever(self.saga), self.saga.updates.run()]


def definition(settings: GenerationSettings | None = None) -> ServiceDefinition:
    settings = settings or GenerationSettings()
    service = GenerationService(settings)
    return ServiceDefinition(
        name="generation",
        settings=settings,
        metadata=models.metadata,
        register=service.register,
        consumers=service.consumers,
        background=service.background,
    )


if __name__ == "__main__":
    run(definition())
