"""Local disk: ``<data dir>/files/ab/cd/<file id>``, written atomically (temp file, then rename)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from services.files.storage import StoredObject


class LocalDiskStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def key_for(self, file_id: uuid.UUID) -> str:
        # Two levels of fan-out keep directories small; the id is ours, never the user's input.
        text = file_id.hex
        return f"{text[:2]}/{text[2:4]}/{file_id}"

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("storage key escapes the storage root")
        return path

    async def save(self, key: str, content: bytes, fmt: str) -> StoredObject:
        await asyncio.to_thread(self._write, self.path_of(key), content)
        return StoredObject(key=key)

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with partial.open("wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    async def read(self, stored: StoredObject, chunk_size: int) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_of(stored.key).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    def delivery_link(self, stored: StoredObject, *, max_pixels: int | None, expires: int) -> str | None:
        return None  # the gateway serves local files, through signed links

    async def remove(self, key: str) -> None:
        path = self.path_of(key)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)
