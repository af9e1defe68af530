"""Accepting bytes: uploads streamed in by users and the images a generation produced.

An upload reserves quota in PostgreSQL for the bytes it receives, step by step and before
anything is stored (one conditional UPDATE per step, so concurrent uploads of one user can
never overshoot the quota together), is spooled to a temporary file, judged from its content, stripped of
location data, written to storage, and only then recorded with its event, in one
transaction. Anything that fails on the way gives the reservation back and removes
what was written: a refused upload leaves no row and no bytes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import tempfile
import unicodedata
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from kit.db import Database
from kit.errors import Conflict, DomainError, FailedPrecondition, FileTooLarge, QuotaExceeded, ValidationError
from kit.events import Outbox
from kit.idempotency import ensure_same_request, request_fingerprint
from services.files import events, monitoring, store
from services.files.images import ImageFacts, prepare_image
from services.files.models import ACTIVE
from services.files.settings import FilesSettings
from services.files.storage import FileStorage, StoredObject
from stylestudio.files.v1 import files_pb2

log = logging.getLogger("stylestudio.files.uploads")

USER_CATEGORIES = ("product_image", "model_image", "avatar")
GENERATED_CATEGORY = "generated_image"


def sanitise_filename(name: str, max_length: int) -> str:
    """The last path component, without control or format characters, at most ``max_length``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in unicodedata.normalize("NFC", base) if unicodedata.category(ch)[0] != "C")
    cleaned = cleaned.strip().strip(".").strip()
    if len(cleaned) > max_length:
        stem, dot, ext = cleaned.rpartition(".")
        keep = ext if dot and len(ext) <= 10 else ""
        cleaned = (stem if keep else cleaned)[: max_length - len(keep) - (1 if keep else 0)]
        cleaned = f"{cleaned}.{keep}" if keep else cleaned
    return cleaned


@dataclass(frozen=True, slots=True)
class PreparedImage:
    content: bytes
    facts: ImageFacts
    sha256: str


class Uploads:
    def __init__(self, settings: FilesSettings, db: Database, outbox: Outbox, storage: FileStorage) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.storage = storage
        self._decoding = asyncio.Semaphore(settings.max_concurrent_validations)

    async def prepare(self, content: bytes) -> PreparedImage:
        """Judge the bytes and strip location data, off the event loop and a few at a time."""
        async with self._decoding:
            return await asyncio.to_thread(self._prepare_sync, content)

    def _prepare_sync(self, content: bytes) -> PreparedImage:
        if not content:
            raise ValidationError("The file is empty", field="file")
        facts, stored = prepare_image(content, self.settings.max_image_pixels)
        return PreparedImage(stored, facts, hashlib.sha256(stored).hexdigest())

    # Uploads by users ----------------------------------------------------------------------------

    async def receive(
        self,
        user_id: str,
        plan: str,
        idempotency_key: str,
        requests: AsyncIterator[files_pb2.UploadFileRequest],
    ) -> dict[str, Any]:
        try:
            return await self._receive(user_id, plan, idempotency_key, requests)
        except DomainError as refusal:
            monitoring.uploads_refused.labels(str(refusal.reason)).inc()
            raise

    async def _receive(
        self,
        user_id: str,
        plan: str,
        idempotency_key: str,
        requests: AsyncIterator[files_pb2.UploadFileRequest],
    ) -> dict[str, Any]:
        metadata = await _first_metadata(requests)
        category = metadata.category
        if category not in USER_CATEGORIES:
            raise ValidationError(f"category must be one of {', '.join(USER_CATEGORIES)}", field="category")
        filename = sanitise_filename(metadata.filename, self.settings.max_filename_length)
        if not filename:
            raise ValidationError("filename is required", field="filename")
        if idempotency_key:
            async with self.db.transaction() as session:
                earlier = await store.file_by_idempotency_key(session, user_id, idempotency_key)
            if earlier is not None:  # a retry, if it sends the same file: read it, store nothing
                digest = await self._digest_of(requests)
                return _replayed(earlier, idempotency_key, request_fingerprint(metadata, digest))
        file_id = uuid.uuid4()
        key = self.storage.key_for(file_id)
        quota = self.settings.quota_for_plan(plan)
        async with self.db.transaction() as session:
            await store.ensure_account(session, user_id, plan)
            await store.create_reservation(session, file_id, user_id, self.storage.name, key)
        try:
            content = await self._receive_within_quota(file_id, user_id, quota, requests)
            fingerprint = request_fingerprint(metadata, hashlib.sha256(content).hexdigest())
            prepared = await self.prepare(content)
            del content
            stored = await self.storage.save(key, prepared.content, prepared.facts.format)
            row = _file_values(file_id, user_id, category, filename, prepared, stored, self.storage.name)
            row["idempotency_key"] = idempotency_key or None
            row["request_hash"] = fingerprint if idempotency_key else None
            return await self._record_upload(row, quota, idempotency_key)
        except BaseException:
            await self._abandon(file_id, key)
            raise

    async def _receive_within_quota(
        self,
        file_id: uuid.UUID,
        user_id: str,
        quota: int,
        requests: AsyncIterator[files_pb2.UploadFileRequest],
    ) -> bytes:
        """The upload's bytes, with quota reserved for exactly what arrived.

        Reserving never runs ahead of the bytes received, so a concurrent upload is only ever
        refused for bytes that really are held; at most one step of bytes waits in the spool
        unreserved, and nothing is stored before all of it is reserved.
        """
        step = self.settings.quota_reservation_step_bytes
        received = reserved = 0
        with tempfile.SpooledTemporaryFile(max_size=self.settings.upload_spool_bytes) as spool:
            async for chunk in self._chunks(requests):
                received += len(chunk)
                spool.write(chunk)
                if received - reserved >= step:
                    await self._reserve(file_id, user_id, received - reserved, quota)
                    reserved = received
            if received > reserved:
                await self._reserve(file_id, user_id, received - reserved, quota)
            spool.seek(0)
            return spool.read()

    async def _digest_of(self, requests: AsyncIterator[files_pb2.UploadFileRequest]) -> str:
        """The SHA-256 of an upload's bytes, read within the size limit and kept nowhere."""
        digest = hashlib.sha256()
        async for chunk in self._chunks(requests):
            digest.update(chunk)
        return digest.hexdigest()

    async def _chunks(self, requests: AsyncIterator[files_pb2.UploadFileRequest]) -> AsyncIterator[bytes]:
        """The chunks after an upload's first message, refused once more than the size limit arrived."""
        limit, received = self.settings.max_file_bytes, 0
        async for request in requests:
            if request.WhichOneof("payload") != "chunk":
                raise ValidationError("Only the first message may carry metadata", field="metadata")
            received += len(request.chunk)
            if received > limit:
                raise FileTooLarge(f"The file is larger than {limit} bytes", details={"max_bytes": limit})
            yield request.chunk

    async def _reserve(self, file_id: uuid.UUID, user_id: str, amount: int, quota: int) -> None:
        async with self.db.transaction() as session:
            if await store.reserve_bytes(session, file_id, user_id, amount, quota):
                return
            account = await store.account(session, user_id)
        used = account.used_bytes if account is not None else 0
        raise QuotaExceeded(
            "This upload would exceed your plan's storage quota",
            details={"quota_bytes": quota, "used_bytes": used},
        )

    async def _record_upload(self, row: dict[str, Any], quota: int, idempotency_key: str) -> dict[str, Any]:
        try:
            async with self.db.transaction() as session:
                if not await store.settle_reservation(session, row["id"], row["user_id"], row["size"], quota):
                    raise QuotaExceeded(
                        "This upload would exceed your plan's storage quota", details={"quota_bytes": quota}
                    )
                row = await store.insert_file(session, row)
                await events.file_uploaded(session, self.outbox, row)
        except store.ReservationExpired as error:
            raise FailedPrecondition("The upload took too long; send it again") from error
        except sa.exc.IntegrityError:
            if not idempotency_key:
                raise
            # The same Idempotency-Key won a race with this upload: answer with its file.
            await self._abandon(row["id"], row["storage_key"])
            async with self.db.transaction() as session:
                earlier = await store.file_by_idempotency_key(session, row["user_id"], idempotency_key)
            if earlier is None:
                raise
            return _replayed(earlier, idempotency_key, row["request_hash"])
        return row

    async def _abandon(self, file_id: uuid.UUID, key: str) -> None:
        """Give back the reservation and remove any bytes written; the janitor retries on failure."""
        try:
            async with self.db.transaction() as session:
                await store.release_reservation(session, file_id)
            await self.storage.remove(key)
        except Exception:
            log.warning("could not clean up an abandoned upload; the janitor will", exc_info=True)

    # Results of generations ----------------------------------------------------------------------

    async def store_generation_results(
        self, user_id: str, generation_id: str, images: Sequence[files_pb2.GeneratedImage]
    ) -> list[dict[str, Any]]:
        """Store a generation's images once; a retry answers with the files stored the first time.

        Results count towards the user's usage but are never refused for quota: the user has
        already paid for them.
        """
        async with self.db.autocommit() as session:
            discarded = await store.is_generation_discarded(session, generation_id)
            earlier = await store.generation_results(session, generation_id)
        if discarded:
            raise _discarded(generation_id)
        if earlier:
            return _same_generation(earlier, user_id)
        for index, image in enumerate(images):
            if len(image.content) > self.settings.max_file_bytes:
                raise FileTooLarge(
                    f"Result image {index} is larger than {self.settings.max_file_bytes} bytes",
                    details={"image_order": index, "max_bytes": self.settings.max_file_bytes},
                )
        rows: list[dict[str, Any]] = []
        try:
            for order, image in enumerate(images):
                prepared = await self.prepare(image.content)
                file_id = uuid.uuid4()
                stored = await self.storage.save(
                    self.storage.key_for(file_id), prepared.content, prepared.facts.format
                )
                filename = f"{generation_id}-{order}.{prepared.facts.format}"
                row = _file_values(
                    file_id, user_id, GENERATED_CATEGORY, filename, prepared, stored, self.storage.name
                )
                row.update(generation_id=generation_id, image_order=order, is_primary=order == 0)
                rows.append(row)
            async with self.db.transaction() as session:
                await store.lock_generation_results(session, generation_id)
                if await store.is_generation_discarded(session, generation_id):
                    raise _discarded(generation_id)  # canceled or failed while its images were prepared
                await store.ensure_account(session, user_id, None)
                rows = [await store.insert_file(session, row) for row in rows]
                for row in rows:
                    await events.file_uploaded(session, self.outbox, row)
                await store.add_usage(session, user_id, sum(int(row["size"]) for row in rows))
        except BaseException as error:
            for row in rows:
                with contextlib.suppress(Exception):
                    await self.storage.remove(row["storage_key"])
            if isinstance(error, sa.exc.IntegrityError):
                # A concurrent retry of the same generation stored its results first.
                async with self.db.transaction() as session:
                    return _same_generation(await store.generation_results(session, generation_id), user_id)
            raise
        return rows


async def _first_metadata(
    requests: AsyncIterator[files_pb2.UploadFileRequest],
) -> files_pb2.UploadFileMetadata:
    first = await anext(aiter(requests), None)
    if first is None or first.WhichOneof("payload") != "metadata":
        raise ValidationError("The first message must carry the file's metadata", field="metadata")
    return first.metadata


def _replayed(earlier: Any, idempotency_key: str, fingerprint: str) -> dict[str, Any]:
    """The file a key first stored, if this is the same upload (kit.idempotency's rule)."""
    ensure_same_request(idempotency_key, earlier.request_hash, fingerprint)
    if earlier.status != ACTIVE:
        raise Conflict(
            "The file stored with this Idempotency-Key was deleted; send it with a new key",
            details={"file_id": str(earlier.id)},
        )
    return dict(earlier._mapping)


def _discarded(generation_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        "This generation did not complete and its results were discarded; they are not stored",
        details={"generation_id": generation_id},
    )


def _same_generation(rows: Sequence[Any], user_id: str) -> list[dict[str, Any]]:
    if any(row.user_id != user_id for row in rows):
        raise FailedPrecondition("These generation results were stored for another user")
    return [dict(row._mapping) for row in rows]


def _file_values(
    file_id: uuid.UUID,
    user_id: str,
    category: str,
    filename: str,
    prepared: PreparedImage,
    stored: StoredObject,
    backend: str,
) -> dict[str, Any]:
    return {
        "id": file_id,
        "user_id": user_id,
        "category": category,
        "filename": filename,
        "content_type": prepared.facts.content_type,
        "format": prepared.facts.format,
        "size": len(prepared.content),
        "width": prepared.facts.width,
        "height": prepared.facts.height,
        "sha256": prepared.sha256,
        "storage_backend": backend,
        "storage_key": stored.key,
        "storage_version": stored.version,
        "status": ACTIVE,
        "generation_id": None,
        "image_order": None,
        "is_primary": False,
    }
