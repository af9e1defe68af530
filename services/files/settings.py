"""Typed settings of the files service (environment, prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from kit.migrations import REPO_ROOT
from kit.settings import DevelopmentOnly, ServiceSettings

MIB = 1024 * 1024


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
