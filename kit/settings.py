"""Typed settings, read only from the environment (prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("users", "billing", "files", "generation", "analytics")

DEFAULT_ADDRESSES = {
    "users": "127.0.0.1:50051",
    "billing": "127.0.0.1:50052",
    "files": "127.0.0.1:50053",
    "generation": "127.0.0.1:50054",
    "analytics": "127.0.0.1:50055",
}


class PlatformSettings(BaseSettings):
    """What every process of the platform shares: where things are, how to reach each other."""

    model_config = SettingsConfigDict(env_prefix="STYLESTUDIO_", extra="ignore")

    # Production unless said otherwise: `make run`, the tests and the benchmarks set
    # "development" explicitly; a deployment that forgets the variable gets the strict checks.
    environment: Literal["development", "production"] = "production"

    # The admin URL is only used by provisioning; a service connects through its own role.
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/stylestudio"
    service_database_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key and stream is prefixed, so test runs and deployments can share a server.
    redis_prefix: str = "stylestudio"

    users_addr: str = DEFAULT_ADDRESSES["users"]
    billing_addr: str = DEFAULT_ADDRESSES["billing"]
    files_addr: str = DEFAULT_ADDRESSES["files"]
    generation_addr: str = DEFAULT_ADDRESSES["generation"]
    analytics_addr: str = DEFAULT_ADDRESSES["analytics"]

    # Signs the credentials services present to each other; a user can never obtain it.
    service_secret: SecretStr = SecretStr("dev-only-service-secret-change-me-in-production")
    service_token_ttl_seconds: int = 300

    # Transport security of every gRPC port and channel (kit/tls.py; docs/kit.md, "Transport
    # security"). Off: plaintext, as on loopback. On: each process serves and presents its own
    # certificate (PEM chain and unencrypted key) and trusts peers the CA signed; services refuse
    # callers without a certificate unless require_client_cert is false.
    grpc_tls: bool = False
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_ca_file: str = ""
    grpc_tls_require_client_cert: bool = True

    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    # OTLP/gRPC collector endpoint (e.g. http://127.0.0.1:4317); empty: traces are not exported.
    otel_exporter_otlp_endpoint: str = ""
    # Append finished spans as JSON lines to this file (tests and local debugging).
    trace_file: str = ""

    # The services' event loop: "uvloop" (C, several times cheaper per socket event, which
    # psycopg's async waits are full of) or "asyncio"; grpc.aio's poller works with both.
    event_loop: str = Field(default="uvloop", pattern="^(uvloop|asyncio)$")

    shutdown_grace_seconds: float = 10.0
    startup_timeout_seconds: float = 60.0
    migrate_on_start: bool = True
    db_pool_size: int = 10
    db_max_overflow: int = 20
    db_pool_pre_ping: bool = False
    rpc_deadline_seconds: float = 10.0
    health_check_interval_seconds: float = 2.0

    # Events: outbox relay and consumers.
    outbox_poll_interval_seconds: float = 1.0
    outbox_batch_size: int = 256
    stream_max_length: int = 1_000_000
    consumer_block_ms: int = 1000
    consumer_claim_idle_ms: int = 30_000

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def address_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))


class ServiceSettings(PlatformSettings):
    """Base for a service's own typed settings; a service subclasses it to add its knobs."""

    service_name: str = ""
    # A second, plaintext port serving grpc.health.v1 and nothing else (e.g. 0.0.0.0:8081), for
    # probes that cannot speak TLS (the kubelet's gRPC probe); empty: none.
    health_addr: str = ""

    @property
    def listen_addr(self) -> str:
        return self.address_of(self.service_name)
