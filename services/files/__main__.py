"""Start the files service: ``python -m services.files``."""

from __future__ import annotations

from collections.abc import Sequence

from kit.server import Registration, Runtime, ServiceDefinition, run
from services.files import api, models, monitoring
from services.files.janitor import Janitor
from services.files.settings import FilesSettings
from services.files.storage import storage_from_settings


def definition(settings: FilesSettings | None = None) -> ServiceDefinition:
    settings = settings or FilesSettings()
    # One storage back end per process, shared by the API and the janitor.
    storage = storage_from_settings(settings)

    def register(runtime: Runtime) -> Sequence[Registration]:
        monitoring.watch(runtime.metrics)
        return api.registrations(runtime, storage)

    return ServiceDefinition(
        name="files",
        settings=settings,
        metadata=models.metadata,
        register=register,
        background=lambda runtime: [Janitor(settings, runtime.db, storage).run()],
    )


if __name__ == "__main__":
    run(definition())
