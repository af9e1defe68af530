"""A user's file library: reading, listing, deleting, usage, and the pins of running generations.

Every lookup is by owner and id together, so another user's file is simply not found.
Deleting marks the file deleted at once (its quota is free again); its bytes are removed
later by the janitor, and a file pinned by a running generation cannot be deleted at all.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kit import paging
from kit.db import Database
from kit.errors import FailedPrecondition, NotFound, ValidationError
from kit.events import Outbox
from services.files import events, store
from services.files.images import thumbnail_of
from services.files.links import THUMBNAIL, LinkSigner, refused_link
from services.files.settings import FilesSettings
from services.files.storage import FileStorage, StoredObject
from services.files.uploads import GENERATED_CATEGORY, USER_CATEGORIES


def parse_file_id(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class FileLinks:
    """Where a file can be fetched without credentials, until ``expires_at``."""

    url: str
    expires_at: datetime
    thumbnail_url: str


@dataclass(frozen=True, slots=True)
class LinkedContent:
    """What a signed link serves: the file, the rendition's bytes, how long the link has left."""

    file: dict[str, Any]
    rendition: str
    chunks: AsyncIterator[bytes]
    remaining_seconds: int


class FileLibrary:
    def __init__(self, settings: FilesSettings, db: Database, outbox: Outbox, storage: FileStorage) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.storage = storage
        self.signer = LinkSigner(
            settings.url_signing_keys(),
            settings.file_url_key_id,
            settings.file_url_ttl_seconds,
            settings.file_url_base,
        )
        # Decoding for thumbnails is bounded like the uploads' validation.
        self._thumbnailing = asyncio.Semaphore(settings.max_concurrent_validations)

    def links(self, file: dict[str, Any]) -> FileLinks:
        """Signed links to the file and its thumbnail: the back end's own (a CDN) when it has
        them, else the gateway's signed route."""
        stored = StoredObject(key=file["storage_key"], version=file["storage_version"])
        expires = self.signer.expiry()
        direct = self.storage.delivery_link(stored, max_pixels=None, expires=expires)
        if direct is not None:
            small = self.storage.delivery_link(
                stored, max_pixels=self.settings.thumbnail_max_pixels, expires=expires
            )
            return FileLinks(direct, datetime.fromtimestamp(expires, UTC), small or direct)
        original = self.signer.link(str(file["id"]))
        return FileLinks(original.url, original.expires_at, self.signer.link(str(file["id"]), THUMBNAIL).url)

    async def linked_content(
        self, file_id: str, rendition: str, expires: int, kid: str, sig: str
    ) -> LinkedContent:
        """The bytes a signed link names; FORBIDDEN for a bad or expired link or a deleted file."""
        remaining = self.signer.verify(file_id, rendition, expires, kid, sig)
        async with self.db.autocommit() as session:
            row = await store.active_file_by_id(session, uuid.UUID(file_id))
        if row is None:
            raise refused_link()
        file = dict(row._mapping)
        stored = StoredObject(key=file["storage_key"], version=file["storage_version"])
        if rendition == THUMBNAIL:
            stored = StoredObject(key=file["thumbnail_key"] or await self._make_thumbnail(file, stored))
        chunks = self.storage.read(stored, self.settings.download_chunk_bytes)
        return LinkedContent(file, rendition, chunks, remaining)

    async def _make_thumbnail(self, file: dict[str, Any], stored: StoredObject) -> str:
        """Made once, on the first request for it, and stored beside the file in its back end."""
        content = b"".join(
            [chunk async for chunk in self.storage.read(stored, self.settings.download_chunk_bytes)]
        )
        async with self._thumbnailing:
            small = await asyncio.to_thread(
                thumbnail_of, content, file["format"], self.settings.thumbnail_max_pixels
            )
        key = (await self.storage.save(f"{file['storage_key']}.thumb", small, file["format"])).key
        async with self.db.autocommit() as session:
            recorded = await store.set_thumbnail_key(session, file["id"], key)
        if not recorded:  # purged meanwhile: nothing would ever remove it
            await self.storage.remove(key)
            raise refused_link()
        return key

    async def get(self, user_id: str, file_id: str) -> dict[str, Any]:
        found = parse_file_id(file_id)
        row = None
        if found is not None:
            async with self.db.autocommit() as session:
                row = await store.active_file(session, user_id, found)
        if row is None:
            raise NotFound("File not found", details={"id": file_id})
        return dict(row._mapping)

    async def list_files(
        self, user_id: str, category: str, page_size: int, page_token: str
    ) -> tuple[list[dict[str, Any]], str]:
        if category and category not in (*USER_CATEGORIES, GENERATED_CATEGORY):
            raise ValidationError("category is not a file category", field="category")
        size = paging.page_size(page_size)
        after = paging.decode_cursor(page_token)
        async with self.db.autocommit() as session:
            rows = await store.list_active_files(
                session, user_id, category=category, after=after, limit=size + 1
            )
        page = paging.page_of(rows, size, paging.cursor_of)
        return [dict(row._mapping) for row in page.items], page.next_page_token

    async def delete(self, user_id: str, file_id: str) -> None:
        found = parse_file_id(file_id)
        async with self.db.transaction() as session:
            row = await store.active_file(session, user_id, found, lock=True) if found else None
            if row is None:
                raise NotFound("File not found", details={"id": file_id})
            if await store.is_referenced(session, row.id):
                raise FailedPrecondition(
                    "The file is used by a generation in progress; delete it when that has finished",
                    details={"id": file_id},
                )
            await store.mark_deleted(session, row.id)
            await store.add_usage(session, user_id, -int(row.size))
            await events.file_deleted(session, self.outbox, dict(row._mapping))

    async def discard_generation_results(self, user_id: str, generation_id: str) -> int:
        """Deletes what was stored for a generation that did not complete, and refuses what a
        worker may still try to store for it (see Uploads.store_generation_results); how many files."""
        async with self.db.transaction() as session:
            await store.lock_generation_results(session, generation_id)
            await store.mark_generation_discarded(session, user_id, generation_id)
            rows = await store.active_generation_results(session, user_id, generation_id)
            for row in rows:
                await store.mark_deleted(session, row.id)
                await events.file_deleted(session, self.outbox, dict(row._mapping))
            if rows:
                await store.add_usage(session, user_id, -sum(int(row.size) for row in rows))
        return len(rows)

    async def usage(self, user_id: str, plan: str | None) -> dict[str, Any]:
        """The user's usage; ``plan`` from their token, or None to use the plan last seen."""
        async with self.db.autocommit() as session:
            categories = await store.usage_by_category(session, user_id)
            if plan is None:
                account = await store.account(session, user_id)
                plan = account.plan if account is not None else "free"
        by_category = {
            row.category: {"total_bytes": int(row.total_bytes), "file_count": int(row.file_count)}
            for row in categories
        }
        return {
            "total_bytes": sum(c["total_bytes"] for c in by_category.values()),
            "file_count": sum(c["file_count"] for c in by_category.values()),
            "quota_bytes": self.settings.quota_for_plan(plan),
            "by_category": by_category,
        }

    async def check_ownership(self, user_id: str, file_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        parsed = {text: parse_file_id(text) for text in file_ids}
        wanted = [found for found in parsed.values() if found is not None]
        owned: set[uuid.UUID] = set()
        if wanted:
            async with self.db.autocommit() as session:
                owned = {row.id for row in await store.active_files(session, user_id, wanted)}
        return (
            [text for text in file_ids if parsed[text] in owned],
            [text for text in file_ids if parsed[text] not in owned],
        )

    async def acquire(self, user_id: str, generation_id: str, file_ids: Sequence[str]) -> None:
        if not generation_id:
            raise ValidationError("generation_id is required", field="generation_id")
        parsed = {text: parse_file_id(text) for text in file_ids}
        wanted = sorted({found for found in parsed.values() if found is not None})
        async with self.db.transaction() as session:
            # Locking the rows orders this against a concurrent delete of the same files.
            rows = await store.active_files(session, user_id, wanted, lock=True)
            found = {row.id for row in rows}
            missing = [text for text, value in parsed.items() if value not in found]
            if missing:
                raise NotFound("Some files were not found", details={"missing_ids": ",".join(missing)})
            await store.add_references(session, generation_id, wanted)

    async def release(self, generation_id: str, file_ids: Sequence[str]) -> None:
        if not generation_id:
            raise ValidationError("generation_id is required", field="generation_id")
        parsed = [found for text in file_ids if (found := parse_file_id(text)) is not None]
        if file_ids and not parsed:
            return
        async with self.db.autocommit() as session:
            await store.remove_references(session, generation_id, parsed)

    async def content(self, user_id: str, file_id: str) -> tuple[dict[str, Any], AsyncIterator[bytes]]:
        file = await self.get(user_id, file_id)
        stored = StoredObject(key=file["storage_key"], version=file["storage_version"])
        return file, self.storage.read(stored, self.settings.download_chunk_bytes)
