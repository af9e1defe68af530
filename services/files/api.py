"""The files service's gRPC servicers: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2, timestamp_pb2

from kit.auth import current_caller, user_id_for
from kit.errors import ValidationError
from kit.interceptors import idempotency_key
from kit.server import Registration, Runtime
from services.files.images import content_type_of
from services.files.library import FileLibrary, FileLinks
from services.files.settings import FilesSettings
from services.files.storage import FileStorage
from services.files.uploads import Uploads
from stylestudio.files.v1 import files_pb2, files_pb2_grpc, resources_pb2


class FilesApi(files_pb2_grpc.FilesServiceServicer):
    def __init__(self, settings: FilesSettings, uploads: Uploads, library: FileLibrary) -> None:
        self.settings = settings
        self.uploads = uploads
        self.library = library

    def file_message(self, file: Mapping[str, Any]) -> resources_pb2.File:
        return file_message(file, self.library.links(dict(file)))

    # Public, for the signed-in user ---------------------------------------------------------------

    async def UploadFile(
        self,
        request_iterator: AsyncIterator[files_pb2.UploadFileRequest],
        context: grpc.aio.ServicerContext,
    ) -> resources_pb2.File:
        caller = current_caller()
        key = idempotency_key(context)
        file = await self.uploads.receive(caller.user_id, caller.plan, key, request_iterator)
        return self.file_message(file)

    async def ListFiles(
        self, request: files_pb2.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.ListFilesResponse:
        files, next_token = await self.library.list_files(
            current_caller().user_id, request.category, request.page_size, request.page_token
        )
        return files_pb2.ListFilesResponse(
            files=[self.file_message(f) for f in files], next_page_token=next_token
        )

    async def GetStorageUsage(
        self, request: files_pb2.GetStorageUsageRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.StorageUsage:
        caller = current_caller()
        return usage_message(await self.library.usage(caller.user_id, caller.plan or None))

    async def GetFile(
        self, request: files_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.File:
        return self.file_message(await self.library.get(current_caller().user_id, request.id))

    async def DownloadFile(
        self, request: files_pb2.DownloadFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        file, chunks = await self.library.content(current_caller().user_id, request.id)
        # The bytes of a file id never change, but are private.
        cache = f"private, max-age={self.settings.download_cache_max_age_seconds}, immutable"
        async for body in _served(context, file, chunks, cache, f'"{file["sha256"]}"'):
            yield body

    async def DownloadSignedFile(
        self, request: files_pb2.DownloadSignedFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        linked = await self.library.linked_content(
            request.id, request.rendition, request.expires, request.kid, request.sig
        )
        file = linked.file
        # Anyone holding the link may see the bytes, caches included, but never after the link
        # expires (a deleted file's link is refused here at once; a cache keeps it at most that long).
        max_age = min(linked.remaining_seconds, self.settings.download_cache_max_age_seconds)
        tag = f'"{file["sha256"]}"' if not linked.rendition else f'"{file["sha256"]}-{linked.rendition}"'
        async for body in _served(context, file, linked.chunks, f"public, max-age={max_age}", tag):
            yield body

    async def DeleteFile(
        self, request: files_pb2.DeleteFileRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.library.delete(current_caller().user_id, request.id)
        return empty_pb2.Empty()

    # Internal, for the generation saga and the dashboard ------------------------------------------

    async def CheckFileOwnership(
        self, request: files_pb2.CheckFileOwnershipRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.CheckFileOwnershipResponse:
        owned, missing = await self.library.check_ownership(user_id_for(request.user_id), request.file_ids)
        return files_pb2.CheckFileOwnershipResponse(owned_ids=owned, missing_ids=missing)

    async def StoreGenerationResults(
        self, request: files_pb2.StoreGenerationResultsRequest, context: grpc.aio.ServicerContext
    ) -> files_pb2.StoreGenerationResultsResponse:
        if not request.generation_id:
            raise ValidationError("generation_id is required", field="generation_id")
        if not request.images:
            raise ValidationError("images must not be empty", field="images")
        files = await self.uploads.store_generation_results(
            user_id_for(request.user_id), request.generation_id, request.images
        )
        return files_pb2.StoreGenerationResultsResponse(files=[self.file_message(f) for f in files])

    async def ReadFileContent(
        self, request: files_pb2.ReadFileContentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[files_pb2.ReadFileContentResponse]:
        file, chunks = await self.library.content(user_id_for(request.user_id), request.file_id)
        yield files_pb2.ReadFileContentResponse(file=self.file_message(file))
        async for chunk in chunks:
            yield files_pb2.ReadFileContentResponse(chunk=chunk)

    async def AcquireFileReferences(
        self, request: files_pb2.AcquireFileReferencesRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.library.acquire(user_id_for(request.user_id), request.generation_id, request.file_ids)
        return empty_pb2.Empty()

    async def ReleaseFileReferences(
        self, request: files_pb2.ReleaseFileReferencesRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.library.release(request.generation_id, request.file_ids)
        return empty_pb2.Empty()

    async def DiscardGenerationResults(
        self, request: files_pb2.DiscardGenerationResultsRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        if not request.generation_id:
            raise ValidationError("generation_id is required", field="generation_id")
        await self.library.discard_generation_results(user_id_for(request.user_id), request.generation_id)
        return empty_pb2.Empty()

    async def GetStorageSummary(
        self, request: files_pb2.GetStorageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.StorageUsage:
        plan = request.plan or None  # else the plan files last saw for the user
        return usage_message(await self.library.usage(user_id_for(request.user_id), plan))


async def _served(
    context: grpc.aio.ServicerContext,
    file: Mapping[str, Any],
    chunks: AsyncIterator[bytes],
    cache_control: str,
    etag: str,
) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """A file's bytes as HttpBody messages, after the headers the gateway passes on: caching, the
    validator (If-None-Match) and the name to save it under. The initial metadata goes out before
    any bytes are read, so the gateway can answer a matching If-None-Match without them. The
    content type is the validated format's, never the client's."""
    await context.send_initial_metadata(
        (
            ("cache-control", cache_control),
            ("etag", etag),
            ("content-disposition", content_disposition(file["filename"])),
        )
    )
    first = await anext(aiter(chunks), b"")
    yield httpbody_pb2.HttpBody(content_type=content_type_of(file["format"]), data=first)
    async for chunk in chunks:
        yield httpbody_pb2.HttpBody(data=chunk)


def content_disposition(filename: str) -> str:
    """``inline`` with the stored name (RFC 6266): an ASCII fallback and the UTF-8 original."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\%;' else "_" for ch in filename
    )
    return f"inline; filename=\"{fallback or 'file'}\"; filename*=UTF-8''{quote(filename, safe='')}"


def file_message(file: Mapping[str, Any], links: FileLinks) -> resources_pb2.File:
    created_at = timestamp_pb2.Timestamp()
    created_at.FromDatetime(file["created_at"])
    url_expires_at = timestamp_pb2.Timestamp()
    url_expires_at.FromDatetime(links.expires_at)
    return resources_pb2.File(
        id=str(file["id"]),
        filename=file["filename"],
        content_type=file["content_type"],
        size=file["size"],
        category=file["category"],
        width=file["width"],
        height=file["height"],
        format=file["format"],
        sha256=file["sha256"],
        created_at=created_at,
        generation_id=file["generation_id"] or "",
        image_order=file["image_order"] or 0,
        is_primary=file["is_primary"],
        url=links.url,
        url_expires_at=url_expires_at,
        thumbnail_url=links.thumbnail_url,
    )


def usage_message(usage: Mapping[str, Any]) -> resources_pb2.StorageUsage:
    return resources_pb2.StorageUsage(
        total_bytes=usage["total_bytes"],
        file_count=usage["file_count"],
        quota_bytes=usage["quota_bytes"],
        by_category={
            name: resources_pb2.CategoryUsage(total_bytes=c["total_bytes"], file_count=c["file_count"])
            for name, c in usage["by_category"].items()
        },
    )


def registrations(runtime: Runtime, storage: FileStorage) -> Sequence[Registration]:
    settings = runtime.settings
    assert isinstance(settings, FilesSettings)
    uploads = Uploads(settings, runtime.db, runtime.outbox, storage)
    library = FileLibrary(settings, runtime.db, runtime.outbox, storage)
    return [
        Registration(
            FilesApi(settings, uploads, library),
            files_pb2_grpc.add_FilesServiceServicer_to_server,
            files_pb2.DESCRIPTOR.services_by_name["FilesService"],
        ),
    ]
