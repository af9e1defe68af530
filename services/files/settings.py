"""Typed settings of the files service (environment, prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import Field, SecretStr, field_validator

from kit.migrations import REPO_ROOT
from kit.settings import DevelopmentOnly, SecretCheck, ServiceSettings

MIB = 1024 * 1024
# The development key of signed file links: public, so production refuses it (secret_checks).
DEVELOPMENT_URL_SIGNING_KEY = "development-file-url-signing-key-not-secret"


class FilesSettings(ServiceSettings):
    service_name: str = "files"

    # Everything the service writes on local disk lives under here (stored files in data_dir/files).
    data_dir: Path = REPO_ROOT / "data"

    # Uploads: judged on the bytes, never on the declared type or the name.
    max_file_bytes: int = 10 * MIB
    # Decompression bombs: a small file that decodes to a huge bitmap is refused before decoding.
    max_image_pixels: int = 50_000_000
    # Decoding is CPU- and memory-heavy: at most this many images are decoded at once per process.
    max_concurrent_validations: int = 2
    # Uploads are spooled to a temporary file past this many bytes, so memory stays bounded.
    upload_spool_bytes: int = 1 * MIB
    max_filename_length: int = 255
    # Quota is reserved each time this many unreserved bytes have arrived (and for the rest at the end).
    quota_reservation_step_bytes: int = 1 * MIB
    # An upload's reservation untouched this long belongs to a dead upload and is given back.
    reservation_ttl_seconds: float = 300.0

    # Per-plan storage quotas, in bytes.
    quota_free_bytes: int = 100 * MIB
    quota_basic_bytes: int = 1024 * MIB
    quota_pro_bytes: int = 10 * 1024 * MIB
    quota_enterprise_bytes: int = 100 * 1024 * MIB

    # Downloads.
    download_chunk_bytes: int = 256 * 1024
    download_cache_max_age_seconds: int = 86_400

    # Signed links (File.url, File.thumbnail_url; services/files/links.py): how long a link
    # works, the key that signs new links and its id, and the keys of links signed before a
    # rotation (JSON {"key id": "key"}), which keep working until they expire.
    file_url_ttl_seconds: int = Field(default=3600, ge=60)
    file_url_signing_key: SecretStr = SecretStr(DEVELOPMENT_URL_SIGNING_KEY)
    file_url_key_id: str = Field(default="dev", pattern="^[A-Za-z0-9_-]{1,32}$")
    file_url_previous_keys: SecretStr = SecretStr("")
    # Where clients reach the gateway (https://api.example.com): links are absolute on it.
    # Empty: links are paths on the gateway ("/v1/files/...").
    file_url_base: str = ""
    # Thumbnails: at most this many pixels on the long side.
    thumbnail_max_pixels: int = Field(default=256, ge=16, le=2048)

    # The janitor: removes deleted files' bytes and gives back abandoned reservations.
    janitor_interval_seconds: float = 5.0
    janitor_batch_size: int = 100
    # How long a discarded generation is remembered (its late results refused). A worker's
    # store comes at the latest by the generation's deadline, far shorter than this.
    discarded_generation_retention_seconds: float = Field(default=7 * 86_400.0, gt=0)

    # Storage back end: "local" (files under data_dir/files) or "cloudinary".
    storage_backend: str = Field(default="local", pattern="^(local|cloudinary)$")
    cloudinary_cloud_name: str = ""
    cloudinary_api_key: str = ""
    cloudinary_api_secret: SecretStr = SecretStr("")
    # The upload/admin API's base URL (tests point it at a local server speaking Cloudinary's API).
    cloudinary_api_url: str = "https://api.cloudinary.com"
    # Delivery: the host serving the images; empty means Cloudinary's shared CDN. Plain http only
    # for a local stand-in: production keeps secure (https) delivery.
    cloudinary_delivery_host: str = ""
    cloudinary_secure_delivery: bool = True
    cloudinary_folder: str = "stylestudio"
    cloudinary_timeout_seconds: float = 30.0
    # Cloudinary's token-based authentication key (hex, from the console): links then expire
    # with urlExpiresAt. Empty: signed delivery URLs, valid until the asset is destroyed.
    cloudinary_auth_token_key: SecretStr = SecretStr("")

    @field_validator("file_url_previous_keys")
    @classmethod
    def _previous_keys_are_a_key_map(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if text:
            try:
                keys = orjson.loads(text)
            except orjson.JSONDecodeError:
                keys = None
            if not isinstance(keys, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in keys.items()
            ):
                raise ValueError('must be a JSON object {"key id": "key", ...}')
        return value

    def url_signing_keys(self) -> dict[str, bytes]:
        """Every key a link may be signed with, by key id: the current one and the previous ones."""
        previous = self.file_url_previous_keys.get_secret_value()
        keys = {kid: key.encode() for kid, key in (orjson.loads(previous) if previous else {}).items()}
        keys[self.file_url_key_id] = self.file_url_signing_key.get_secret_value().encode()
        return keys

    def secret_checks(self) -> list[SecretCheck]:
        previous = self.file_url_previous_keys.get_secret_value()
        old_keys = orjson.loads(previous) if previous else {}
        return [
            *super().secret_checks(),
            self.secret_check("file_url_signing_key"),
            self.secret_check(
                "cloudinary_auth_token_key", required=bool(self.cloudinary_auth_token_key.get_secret_value())
            ),
            *(
                SecretCheck(
                    f"{self.variable_of('file_url_previous_keys')}[{kid}]",
                    key,
                    frozenset({DEVELOPMENT_URL_SIGNING_KEY}),
                )
                for kid, key in old_keys.items()
            ),
        ]

    def development_only(self) -> list[DevelopmentOnly]:
        plain_http = DevelopmentOnly(
            self.variable_of("cloudinary_secure_delivery"),
            self.storage_backend == "cloudinary" and not self.cloudinary_secure_delivery,
            "images would be delivered over plain http (a local stand-in's setting)",
        )
        cloudinary = self.storage_backend == "cloudinary"
        return [
            *super().development_only(),
            plain_http,
            self.https_only("cloudinary_api_url", in_use=cloudinary),
        ]

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    def quota_for_plan(self, plan: str) -> int:
        """The plan's quota; an unknown or missing plan gets the free plan's."""
        quotas = {
            "free": self.quota_free_bytes,
            "basic": self.quota_basic_bytes,
            "pro": self.quota_pro_bytes,
            "enterprise": self.quota_enterprise_bytes,
        }
        return quotas.get(plan, self.quota_free_bytes)
