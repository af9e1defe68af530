"""Where stored files' bytes live: one interface, a back end chosen by configuration.

Keys are derived from file ids only, never from anything a user sent. ``remove`` is
idempotent (removing what is already gone succeeds), so the janitor can retry freely.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from kit.errors import ProviderUnavailable
from services.files.settings import FilesSettings


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    # What the back end needs besides the key to serve it again (Cloudinary's version).
    version: str = ""


class FileStorage(Protocol):
    name: str

    def key_for(self, file_id: uuid.UUID) -> str: ...

    async def save(self, key: str, content: bytes, fmt: str) -> StoredObject: ...

    def read(self, stored: StoredObject, chunk_size: int) -> AsyncIterator[bytes]: ...

    async def remove(self, key: str) -> None: ...

    def delivery_link(self, stored: StoredObject, *, max_pixels: int | None, expires: int) -> str | None:
        """A URL the back end itself serves the object from without credentials (a CDN), at most
        ``max_pixels`` on the long side when given; None when the gateway serves it (signed links)."""
        ...


class StorageUnavailable(ProviderUnavailable):
    """The back end could not be reached or refused the operation (UNAVAILABLE: try again later)."""


def storage_from_settings(settings: FilesSettings) -> FileStorage:
    if settings.storage_backend == "cloudinary":
        from services.files.storage.cloudinary import CloudinaryStorage

        return CloudinaryStorage.from_settings(settings)
    from services.files.storage.local import LocalDiskStorage

    return LocalDiskStorage(settings.files_dir)
