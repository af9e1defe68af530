"""The Cloudinary back end, through the official SDK, against a local Cloudinary-format server."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from kit.clients import open_channel
from kit.credential_state import CredentialState
from kit.errors import Reason
from kit.server import RunningService
from services.files.__main__ import definition
from services.files.settings import FilesSettings
from services.files.storage import StorageUnavailable, StoredObject
from services.files.storage.cloudinary import CloudinaryStorage
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from tests.files.cloudinary_server import FakeCloudinary, RunningFakeCloudinary
from tests.files.conftest import FilesUser, domain_error_of
from tests.files.samples import image_bytes, stored_form
from tests.harness import Platform, TestDatabase
from tests.harness.platform import free_port


@pytest.fixture(scope="module")
def cloudinary_server() -> Iterator[FakeCloudinary]:
    with RunningFakeCloudinary() as fake:
        yield fake


def _adapter(fake: FakeCloudinary, **overrides: str) -> CloudinaryStorage:
    options = {
        "cloud_name": fake.cloud_name,
        "api_key": fake.api_key,
        "api_secret": fake.api_secret,
        "api_url": fake.url,
        "delivery_host": f"127.0.0.1:{fake.port}",
        "secure_delivery": False,
        "folder": "stylestudio-test",
        "timeout_seconds": 10.0,
    } | overrides
    return CloudinaryStorage(**options)  # type: ignore[arg-type]


async def _read_all(storage: CloudinaryStorage, stored: StoredObject) -> bytes:
    return b"".join([chunk async for chunk in storage.read(stored, 1024)])


async def test_the_adapter_uploads_serves_and_deletes_with_valid_signatures(
    cloudinary_server: FakeCloudinary,
):
    storage = _adapter(cloudinary_server)
    content = image_bytes("PNG", (20, 10))
    key = storage.key_for(uuid.uuid4())
    stored = await storage.save(key, content, "png")
    assert stored.key == key and stored.version
    assert cloudinary_server.assets[("authenticated", key)].content == content
    assert "/s--" in storage.delivery_url(stored)
    assert await _read_all(storage, stored) == content

    await storage.remove(key)
    assert ("authenticated", key) not in cloudinary_server.assets
    await storage.remove(key)  # already gone: still fine
    with pytest.raises(StorageUnavailable):
        await _read_all(storage, stored)
    assert cloudinary_server.rejected_signatures == 0


async def test_with_a_token_key_delivery_links_expire(cloudinary_server: FakeCloudinary):
    storage = _adapter(cloudinary_server, auth_token_key=cloudinary_server.auth_token_key)
    content = image_bytes("PNG", (600, 300))
    stored = await storage.save(storage.key_for(uuid.uuid4()), content, "png")
    other = await storage.save(storage.key_for(uuid.uuid4()), image_bytes("PNG", (20, 20)), "png")
    now = int(time.time())
    link = storage.delivery_link(stored, max_pixels=None, expires=now + 600)
    small = storage.delivery_link(stored, max_pixels=256, expires=now + 600)
    expired = storage.delivery_link(stored, max_pixels=None, expires=now - 1)
    assert link is not None and small is not None and expired is not None
    assert "?__cld_token__=exp=" in link and "/s--" not in link
    rejected = cloudinary_server.rejected_signatures
    async with httpx.AsyncClient() as anonymous:
        served = await anonymous.get(link)
        thumbnail = await anonymous.get(small)
        late = await anonymous.get(expired)
        moved = await anonymous.get(link.replace(stored.key, other.key))  # the token names one URL
    assert served.status_code == 200 and served.content == content
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert image.size == (256, 128)
    assert (late.status_code, moved.status_code) == (401, 401)
    assert cloudinary_server.rejected_signatures == rejected + 2


async def test_requests_signed_with_the_wrong_secret_are_refused(cloudinary_server: FakeCloudinary):
    forged = _adapter(cloudinary_server, api_secret="not-the-secret")
    rejected = cloudinary_server.rejected_signatures
    with pytest.raises(StorageUnavailable):
        await forged.save(forged.key_for(uuid.uuid4()), image_bytes("PNG"), "png")
    assert cloudinary_server.rejected_signatures == rejected + 1

    honest = _adapter(cloudinary_server)
    stored = await honest.save(honest.key_for(uuid.uuid4()), image_bytes("PNG"), "png")
    with pytest.raises(StorageUnavailable):
        await _read_all(forged, stored)  # a delivery URL signed with another secret
    assert cloudinary_server.rejected_signatures == rejected + 2


@pytest.fixture(scope="module")
async def cloudinary_files(
    files_platform: Platform, cloudinary_server: FakeCloudinary, infrastructure: object, tmp_path_factory
) -> AsyncIterator[str]:
    """A files service configured for Cloudinary, in this process, on a database of its own."""
    database = TestDatabase(infrastructure.database_url)  # type: ignore[attr-defined]
    database.create(services=["files"])
    settings = FilesSettings(
        database_url=database.admin_url,
        service_database_url=database.service_urls["files"],
        redis_url=files_platform.redis_url,
        redis_prefix=f"{files_platform.redis_prefix}:cloudinary",
        users_addr=files_platform.addresses["users"],
        # It asks the platform's users service about tokens: as "files", with this run's key.
        **files_platform.key_settings("files"),
        files_addr=f"127.0.0.1:{free_port()}",
        migrate_on_start=False,
        data_dir=tmp_path_factory.mktemp("cloudinary-files"),
        janitor_interval_seconds=0.2,
        storage_backend="cloudinary",
        cloudinary_cloud_name=cloudinary_server.cloud_name,
        cloudinary_api_key=cloudinary_server.api_key,
        cloudinary_api_secret=SecretStr(cloudinary_server.api_secret),
        cloudinary_api_url=cloudinary_server.url,
        cloudinary_delivery_host=f"127.0.0.1:{cloudinary_server.port}",
        cloudinary_secure_delivery=False,
    )
    service = RunningService(definition(settings))
    await service.start()
    try:
        yield settings.files_addr
    finally:
        await service.stop()
        database.drop()


async def test_the_service_stores_serves_and_deletes_through_cloudinary(
    files_platform: Platform, cloudinary_files: str, cloudinary_server: FakeCloudinary
):
    channel = open_channel(cloudinary_files)
    try:
        user_id, token = files_platform.user_token()
        # This files service keeps its Redis keys under a prefix of its own: its token check
        # reads the user's credential state there.
        state = CredentialState(version=0, role="user", plan="free")
        files_platform.store_credential_state(user_id, state, f"{files_platform.redis_prefix}:cloudinary")
        user = FilesUser(user_id, token, files_pb2_grpc.FilesServiceStub(channel))
        content = image_bytes("WEBP", (600, 300))
        file = await user.upload(content, filename="dress.webp")
        key = f"stylestudio/{file.id}"
        assert cloudinary_server.assets[("authenticated", key)].content == stored_form(content)
        content_type, body, _ = await user.download(file.id)
        assert (content_type, body) == ("image/webp", stored_form(content))

        # The links are Cloudinary's signed delivery URLs: the CDN serves the bytes, no gateway.
        delivery = f"{cloudinary_server.url}/{cloudinary_server.cloud_name}/image/authenticated/s--"
        assert file.url.startswith(delivery) and file.url.endswith(f"/{key}")
        assert file.url_expires_at.seconds > time.time()
        rejected = cloudinary_server.rejected_signatures
        async with httpx.AsyncClient() as anonymous:
            served = await anonymous.get(file.url)
            small = await anonymous.get(file.thumbnail_url)
            forged = await anonymous.get(file.url.replace(f"/{key}", f"/stylestudio/{uuid.uuid4()}"))
        assert served.status_code == 200 and served.content == stored_form(content)
        assert file.thumbnail_url.startswith(delivery) and "/c_limit,h_256,w_256/" in file.thumbnail_url
        with Image.open(io.BytesIO(small.content)) as thumbnail:
            assert thumbnail.size == (256, 128)
        assert forged.status_code == 401 and cloudinary_server.rejected_signatures == rejected + 1

        refused = await domain_error_of(user.upload(b"<html></html>"))
        assert refused.reason == Reason.INVALID_FILE_TYPE

        await user.stub.DeleteFile(files_pb2.DeleteFileRequest(id=file.id), metadata=user.metadata)
        deadline = time.monotonic() + 10
        while ("authenticated", key) in cloudinary_server.assets:
            assert time.monotonic() < deadline, "the janitor did not destroy the asset"
            await asyncio.sleep(0.1)
        assert key in cloudinary_server.destroyed
    finally:
        await channel.close()
