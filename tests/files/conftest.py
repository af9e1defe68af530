"""Fixtures of the files service's tests: stubs, uploads, and a look at its database and disk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest

from kit.errors import DomainError, from_rpc_error
from stylestudio.files.v1 import files_pb2, files_pb2_grpc, resources_pb2
from tests.harness import Platform, own_database

CHUNK = 64 * 1024


def upload_stream(
    content: bytes, *, filename: str = "photo.jpg", category: str = "product_image", content_type: str = ""
) -> Iterable[files_pb2.UploadFileRequest]:
    metadata = files_pb2.UploadFileMetadata(filename=filename, category=category, content_type=content_type)
    yield files_pb2.UploadFileRequest(metadata=metadata)
    for start in range(0, len(content), CHUNK):
        yield files_pb2.UploadFileRequest(chunk=content[start : start + CHUNK])


@dataclass
class FilesUser:
    """A signed-in user of the files service, calling over gRPC with their access token."""

    user_id: str
    token: str
    stub: files_pb2_grpc.FilesServiceStub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def upload(self, content: bytes, *, idempotency_key: str = "", **fields: str) -> resources_pb2.File:
        metadata = self.metadata + ((("idempotency-key", idempotency_key),) if idempotency_key else ())
        return await self.stub.UploadFile(upload_stream(content, **fields), metadata=metadata)

    async def download(self, file_id: str) -> tuple[str, bytes, dict[str, str]]:
        call = self.stub.DownloadFile(files_pb2.DownloadFileRequest(id=file_id), metadata=self.metadata)
        content_type, body = "", b""
        async for part in call:
            content_type = content_type or part.content_type
            body += part.data
        headers = {key: value for key, value in (await call.initial_metadata()) if isinstance(value, str)}
        return content_type, body, headers


async def domain_error_of(awaitable: object) -> DomainError:
    """The domain error a call failed with (fails the test if it succeeded)."""
    try:
        await awaitable  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return from_rpc_error(error)
    raise AssertionError("the call succeeded")


class FilesDatabase:
    """Read-only look at the files schema, to prove what was (not) left behind."""

    def __init__(self, url: str) -> None:
        self.dsn = url.replace("postgresql+psycopg://", "postgresql://")

    def scalar(self, sql: str, *params: object) -> object:
        with psycopg.connect(self.dsn) as connection:
            row = connection.execute(sql, params).fetchone()
            return row[0] if row else None

    def file_rows(self, user_id: str) -> int:
        return int(self.scalar("SELECT count(*) FROM files.files WHERE user_id = %s", user_id))  # type: ignore[call-overload]

    def reserved_bytes(self, user_id: str) -> int:
        value = self.scalar("SELECT reserved_bytes FROM files.storage_accounts WHERE user_id = %s", user_id)
        return int(value or 0)  # type: ignore[call-overload]

    def used_bytes(self, user_id: str) -> int:
        value = self.scalar("SELECT used_bytes FROM files.storage_accounts WHERE user_id = %s", user_id)
        return int(value or 0)  # type: ignore[call-overload]

    def reservations(self, user_id: str) -> int:
        return int(self.scalar("SELECT count(*) FROM files.upload_reservations WHERE user_id = %s", user_id))  # type: ignore[call-overload]


def stored_files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()} if root.exists() else set()


# The "basic" plan gets a tiny quota here so quota tests need only a few small uploads; the
# free plan keeps its real default, so the 10 MiB size limit is what refuses an 11 MiB file.
BASIC_QUOTA_BYTES = 300 * 1024
# Signed links: a current key and one kept from before a rotation (tests/files/test_signed_links.py).
URL_SIGNING_KEYS = {
    "k1": "previous-url-signing-key-for-the-tests-0001",
    "k2": "current-url-signing-key-for-the-tests-00002",
}
FILES_ENV = {
    "STYLESTUDIO_FILE_URL_KEY_ID": "k2",
    "STYLESTUDIO_FILE_URL_SIGNING_KEY": URL_SIGNING_KEYS["k2"],
    "STYLESTUDIO_FILE_URL_PREVIOUS_KEYS": json.dumps({"k1": URL_SIGNING_KEYS["k1"]}),
    "STYLESTUDIO_QUOTA_BASIC_BYTES": str(BASIC_QUOTA_BYTES),
    "STYLESTUDIO_QUOTA_RESERVATION_STEP_BYTES": str(64 * 1024),
    "STYLESTUDIO_JANITOR_INTERVAL_SECONDS": "0.3",
}


@pytest.fixture(scope="package")
async def files_platform(
    infrastructure: object, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """Only what the files service needs (users for the JWKS, files), on a database of its own."""
    work_dir = tmp_path_factory.mktemp("files-platform")
    with own_database(infrastructure, ["users", "files"]) as database:
        async with Platform(database, redis_url, work_dir, extra_env=FILES_ENV) as running:
            await running.start_and_wait("users", "files")
            yield running


@pytest.fixture(scope="package")
def files_database(files_platform: Platform) -> FilesDatabase:
    return FilesDatabase(files_platform.database.admin_url)


@pytest.fixture(scope="package")
def files_root(files_platform: Platform) -> Path:
    return files_platform.work_dir / "data" / "files"


@pytest.fixture(scope="package")
async def user_files_channel(files_platform: Platform) -> AsyncIterator[grpc.aio.Channel]:
    channel = files_platform.user_channel("files")
    yield channel
    await channel.close()


@pytest.fixture
def new_user(files_platform: Platform, user_files_channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    def make(plan: str = "free") -> FilesUser:
        user_id, token = files_platform.user_token(plan=plan)
        return FilesUser(user_id, token, files_pb2_grpc.FilesServiceStub(user_files_channel))

    return make


@pytest.fixture
def internal(files_platform: Platform) -> files_pb2_grpc.FilesServiceStub:
    """The files service as another service sees it (internal RPCs allowed)."""
    return files_platform.stub("files", files_pb2_grpc.FilesServiceStub)


@pytest.fixture
def service_auth(files_platform: Platform) -> tuple[tuple[str, str], ...]:
    """The generation service's credential passed explicitly (kit.clients' channels add it to every
    call type themselves; tests/kit/test_clients.py checks that for streaming calls)."""
    return files_platform.credentials("generation").metadata()


@pytest.fixture(scope="module")
async def rest(files_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway in front of the files platform, for the modules that go through REST (started
    per module, stopped after it)."""
    await files_platform.start_and_wait("gateway")
    async with files_platform.client() as client:
        yield client
    files_platform.stop("gateway")
