"""Background clean-up: the bytes of deleted files, what dead uploads left behind, and
discarded generations past their retention.

Deleted files are purged only when no running generation references them (the query
skips referenced files, and a referenced file cannot be deleted in the first place).
Reservations untouched for longer than ``reservation_ttl_seconds`` belong to uploads
whose process died: their bytes go back to the quota and any stored bytes are removed.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from kit.db import Database
from services.files import store
from services.files.settings import FilesSettings
from services.files.storage import FileStorage, StorageUnavailable

log = logging.getLogger("stylestudio.files.janitor")


class Janitor:
    def __init__(self, settings: FilesSettings, db: Database, storage: FileStorage) -> None:
        self.settings = settings
        self.db = db
        self.storage = storage

    async def run(self) -> None:
        while True:
            try:
                await self.purge_deleted()
                await self.release_stale_reservations()
                await self.forget_discarded_generations()
            except (sa.exc.SQLAlchemyError, OSError) as error:
                log.warning("janitor pass failed; retrying", extra={"error": type(error).__name__})
            await asyncio.sleep(self.settings.janitor_interval_seconds)

    async def purge_deleted(self) -> int:
        """Remove deleted files' bytes; each file's row is locked while its bytes go."""
        purged = 0
        while True:
            before = purged
            async with self.db.transaction() as session:
                rows = await store.files_awaiting_purge(session, self.settings.janitor_batch_size)
                for row in rows:
                    try:
                        await self.storage.remove(row.storage_key)
                        if row.thumbnail_key:
                            await self.storage.remove(row.thumbnail_key)
                    except StorageUnavailable as error:
                        log.warning(
                            "cannot remove bytes yet", extra={"file_id": str(row.id), "error": str(error)}
                        )
                        continue
                    await store.mark_purged(session, row.id)
                    purged += 1
            if len(rows) < self.settings.janitor_batch_size or purged == before:
                return purged

    async def release_stale_reservations(self) -> int:
        async with self.db.transaction() as session:
            rows = await store.stale_reservations(
                session, self.settings.reservation_ttl_seconds, self.settings.janitor_batch_size
            )
            keys = [await store.release_reservation(session, row.file_id) for row in rows]
        for key in keys:
            if key:
                try:
                    await self.storage.remove(key)
                except StorageUnavailable:
                    log.warning("cannot remove an abandoned upload's bytes", extra={"key": key})
        return len(keys)

    async def forget_discarded_generations(self) -> int:
        """Drop discarded generations past their retention: no worker can still store for them."""
        forgotten = 0
        while True:
            async with self.db.autocommit() as session:
                batch = await store.forget_discarded_generations(
                    session,
                    self.settings.discarded_generation_retention_seconds,
                    self.settings.janitor_batch_size,
                )
            forgotten += batch
            if batch < self.settings.janitor_batch_size:
                return forgotten
