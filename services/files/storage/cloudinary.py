"""Cloudinary through its official SDK: signed uploads, signed secure delivery URLs, destroy.

Assets are uploaded with delivery type ``authenticated``, so they can only be fetched
through a URL signed with our API secret: a user's images are never publicly listable.
The SDK is synchronous (urllib3), so its calls run in a worker thread. The API and
delivery hosts come from settings, so tests can run this very code against a local
server that speaks Cloudinary's API.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import cloudinary
import cloudinary.exceptions
import cloudinary.uploader
import cloudinary.utils
import httpx

from services.files.settings import FilesSettings
from services.files.storage import StorageUnavailable, StoredObject

DELIVERY_TYPE = "authenticated"


class CloudinaryStorage:
    name = "cloudinary"

    def __init__(
        self,
        *,
        cloud_name: str,
        api_key: str,
        api_secret: str,
        api_url: str,
        delivery_host: str,
        secure_delivery: bool,
        folder: str,
        timeout_seconds: float,
        auth_token_key: str = "",
    ) -> None:
        if not (cloud_name and api_key and api_secret):
            raise ValueError("the cloudinary back end needs cloud name, API key and API secret")
        self._folder = folder.strip("/")
        self._auth_token_key = auth_token_key
        self._timeout = timeout_seconds
        # Passed on every call rather than through cloudinary.config(): no process-global state.
        self._options: dict[str, Any] = {
            "cloud_name": cloud_name,
            "api_key": api_key,
            "api_secret": api_secret,
            "upload_prefix": api_url.rstrip("/"),
            "secure": secure_delivery,
            "timeout": timeout_seconds,
        }
        if delivery_host:
            self._options["secure_distribution" if secure_delivery else "cname"] = delivery_host

    @classmethod
    def from_settings(cls, settings: FilesSettings) -> CloudinaryStorage:
        return cls(
            cloud_name=settings.cloudinary_cloud_name,
            api_key=settings.cloudinary_api_key,
            api_secret=settings.cloudinary_api_secret.get_secret_value(),
            api_url=settings.cloudinary_api_url,
            delivery_host=settings.cloudinary_delivery_host,
            secure_delivery=settings.cloudinary_secure_delivery,
            folder=settings.cloudinary_folder,
            timeout_seconds=settings.cloudinary_timeout_seconds,
            auth_token_key=settings.cloudinary_auth_token_key.get_secret_value(),
        )

    def key_for(self, file_id: uuid.UUID) -> str:
        return f"{self._folder}/{file_id}" if self._folder else str(file_id)

    async def save(self, key: str, content: bytes, fmt: str) -> StoredObject:
        upload = io.BytesIO(content)
        upload.name = f"{key.rsplit('/', 1)[-1]}.{fmt}"
        try:
            result = await asyncio.to_thread(
                cloudinary.uploader.upload,
                upload,
                public_id=key,
                resource_type="image",
                type=DELIVERY_TYPE,
                overwrite=True,
                **self._options,
            )
        except cloudinary.exceptions.Error as error:
            raise StorageUnavailable(f"cloudinary upload failed: {type(error).__name__}") from error
        return StoredObject(key=str(result["public_id"]), version=str(result.get("version", "")))

    def delivery_url(self, stored: StoredObject, max_pixels: int | None = None, expires: int = 0) -> str:
        """A signed delivery URL of the asset; scaled down to ``max_pixels`` on its long side by
        a Cloudinary transformation when given (the signature covers the transformation). With
        ``expires`` and a token key, a token-authenticated URL that stops working then."""
        options = dict(self._options)
        options.pop("timeout")
        # Never the SDK's process-wide configuration (CLOUDINARY_URL): only what was given here.
        options["auth_token"] = False
        if expires and self._auth_token_key:
            options["auth_token"] = {"key": self._auth_token_key, "expiration": expires}
        if max_pixels is not None:
            options["transformation"] = [{"crop": "limit", "width": max_pixels, "height": max_pixels}]
        url, _ = cloudinary.utils.cloudinary_url(
            stored.key,
            resource_type="image",
            type=DELIVERY_TYPE,
            sign_url=True,
            version=stored.version or None,
            **options,
        )
        return str(url)

    def delivery_link(self, stored: StoredObject, *, max_pixels: int | None, expires: int) -> str | None:
        # Served by Cloudinary's CDN. With a token key (Cloudinary's token-based authentication)
        # the link expires; without, its signature covers the asset and transformation, not a
        # time, and the link works until the asset is destroyed (purge, with invalidation).
        return self.delivery_url(stored, max_pixels, expires)

    async def read(self, stored: StoredObject, chunk_size: int) -> AsyncIterator[bytes]:
        async with (
            httpx.AsyncClient(timeout=self._timeout) as client,
            client.stream("GET", self.delivery_url(stored)) as response,
        ):
            if response.status_code != 200:
                raise StorageUnavailable(f"cloudinary delivery answered {response.status_code}")
            async for chunk in response.aiter_bytes(chunk_size):
                yield chunk

    async def remove(self, key: str) -> None:
        try:
            result = await asyncio.to_thread(
                cloudinary.uploader.destroy,
                key,
                resource_type="image",
                type=DELIVERY_TYPE,
                invalidate=True,
                **self._options,
            )
        except cloudinary.exceptions.Error as error:
            raise StorageUnavailable(f"cloudinary destroy failed: {type(error).__name__}") from error
        if result.get("result") not in ("ok", "not found"):
            raise StorageUnavailable(f"cloudinary destroy answered {result.get('result')!r}")
