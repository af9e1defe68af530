"""Typed settings of the gateway (environment, prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from gateway.client_address import parse_networks
from kit.settings import SERVICES, PlatformSettings

DEFAULT_DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "stylestudio" / "descriptor_set.binpb"


class GatewaySettings(PlatformSettings):
    gateway_addr: str = "127.0.0.1:8080"
    readiness_timeout_seconds: float = 1.0
    # The networks of the proxies in front of the gateway (load balancer, ingress), as CIDRs
    # (JSON list: '["10.0.0.0/8", "192.0.2.7/32"]'). X-Forwarded-For is believed only from
    # them, and only up to the right-most hop that is not one of them (gateway/client_address.py).
    # Empty: the client's address is the TCP peer's, whatever the headers say.
    gateway_trusted_proxies: list[str] = []
    # Replaced by gateway_trusted_proxies: "trust any peer" let every client choose its address.
    gateway_trust_forwarded_for: bool = False
    # uvicorn worker processes; 1 keeps one process (and one set of channels).
    gateway_workers: int = 1
    # uvicorn's event loop: "uvloop" or "asyncio" (grpc.aio's poller works with both).
    gateway_loop: str = "uvloop"
    # Where no ingress terminates TLS, the gateway does: its certificate chain and key (PEM).
    # Both or neither; neither: plain HTTP (loopback, or behind an ingress).
    gateway_tls_cert_file: str = ""
    gateway_tls_key_file: str = ""

    # The contract the routes are derived from (protoc's descriptor set with imports).
    descriptor_set: str = str(DEFAULT_DESCRIPTOR_SET)

    # Requests whose headers are larger are refused with 431 before any call: all of them
    # together, one header the gateway reads (Authorization, Idempotency-Key, ...), and what it
    # forwards as gRPC metadata (gRPC itself refuses metadata past 8 KiB, counting its own).
    max_header_bytes: int = 32 * 1024
    max_header_value_bytes: int = 4 * 1024
    max_metadata_bytes: int = 6 * 1024

    # JSON and webhook bodies larger than this are refused with 413 before the body is read.
    max_body_bytes: int = 1024 * 1024
    # multipart uploads: the whole form; the files service refuses files over its own limit itself.
    max_upload_bytes: int = 16 * 1024 * 1024
    # bytes per gRPC message of a client-streaming upload.
    upload_chunk_bytes: int = 256 * 1024
    # Unary calls use rpc_deadline_seconds; streams (watch, upload, download) live longer.
    stream_deadline_seconds: float = 900.0
    # A comment line on a quiet event stream this often, so proxies keep it open.
    sse_heartbeat_seconds: float = 15.0

    # Catalogue routes (PUBLIC GETs that take nothing: styles, models, packages, the JWKS) are
    # sent with "Cache-Control: public, max-age=" this and an ETag of their body.
    catalogue_cache_max_age_seconds: int = Field(default=300, ge=0)

    # Origins allowed to call the API from a browser; ["*"] allows any. Empty: no CORS headers.
    cors_allow_origins: list[str] = []
    cors_max_age_seconds: int = 600

    # Admission: at most this many API requests in flight in one gateway process; past it a
    # request is answered at once with 429 RATE_LIMITED and Retry-After (busy_retry_after_seconds)
    # instead of waiting behind the others. An event stream or download is checked on entry but
    # holds no place while it streams. 0: no limit. /healthz, /readyz, /metrics are never refused.
    gateway_max_in_flight_requests: int = Field(default=512, ge=0)
    gateway_busy_retry_after_seconds: int = Field(default=1, ge=1)
    # Retry-After for a RATE_LIMITED error whose status carries no RetryInfo.
    default_retry_after_seconds: int = 60
    # How many recent generations, usage records and purchases /v1/dashboard shows.
    dashboard_recent_items: int = 5

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if bool(self.gateway_tls_cert_file) != bool(self.gateway_tls_key_file):
            raise ValueError(
                "STYLESTUDIO_GATEWAY_TLS_CERT_FILE and STYLESTUDIO_GATEWAY_TLS_KEY_FILE go together"
            )
        return self

    @model_validator(mode="after")
    def _streams_end_within_the_connection_age_grace(self) -> GatewaySettings:
        """A stream still open when its connection to a service reaches its maximum age has the
        age's grace to end; a longer stream deadline would have streams cut at that point."""
        if self.grpc_max_connection_age_seconds > 0 and (
            self.stream_deadline_seconds > self.grpc_max_connection_age_grace_seconds
        ):
            raise ValueError(
                "STYLESTUDIO_STREAM_DEADLINE_SECONDS is longer than"
                " STYLESTUDIO_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS: raise the grace (for every"
                " process) or shorten the deadline"
            )
        return self

    @field_validator("gateway_trusted_proxies")
    @classmethod
    def _networks(cls, cidrs: list[str]) -> list[str]:
        try:
            parse_networks(cidrs)
        except ValueError as error:
            raise ValueError(f"STYLESTUDIO_GATEWAY_TRUSTED_PROXIES: {error}") from None
        return cidrs

    @field_validator("gateway_trust_forwarded_for")
    @classmethod
    def _no_blanket_trust(cls, trust: bool) -> bool:
        if trust:
            raise ValueError(
                "STYLESTUDIO_GATEWAY_TRUST_FORWARDED_FOR is no longer supported: list the networks of "
                "your proxies in STYLESTUDIO_GATEWAY_TRUSTED_PROXIES instead (e.g. '[\"10.0.0.0/8\"]')"
            )
        return trust

    def service_key_problems(self) -> list[str]:
        # The gateway signs its relay credential and verifies none: its own key is all it needs.
        from kit.service_keys import service_key_problems

        return service_key_problems(self, verifies=False)

    @property
    def host(self) -> str:
        return self.gateway_addr.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.gateway_addr.rsplit(":", 1)[1])

    @property
    def service_addresses(self) -> dict[str, str]:
        return {service: self.address_of(service) for service in SERVICES}

    def target_of(self, grpc_service: str) -> str | None:
        """The address serving a fully qualified gRPC service (``stylestudio.<service>.v1.X``)."""
        parts = grpc_service.split(".")
        if len(parts) >= 3 and parts[0] == "stylestudio" and parts[1] in SERVICES:
            return self.address_of(parts[1])
        return None
