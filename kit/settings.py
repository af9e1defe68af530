"""Typed settings, read only from the environment (prefix ``STYLESTUDIO_``).

Secure by default: each settings class declares the secrets production needs
(``secret_checks``) and the test or demo switches production refuses
(``development_only``). At start-up ``refuse_insecure_settings`` refuses to start a
production process naming every offending variable, and lets a development one start
with a single warning listing them (docs/security.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from kit.spanstore import DEFAULT_MAX_BYTES as DEFAULT_SPAN_STORE_BYTES
from kit.spanstore import DEFAULT_RETENTION_HOURS

Environment = Literal["development", "production"]

SERVICES = ("users", "billing", "files", "generation", "analytics")

DEFAULT_ADDRESSES = {
    "users": "127.0.0.1:50051",
    "billing": "127.0.0.1:50052",
    "files": "127.0.0.1:50053",
    "generation": "127.0.0.1:50054",
    "analytics": "127.0.0.1:50055",
}


# A call uses a pooled connection for a fraction of its time (a generation's start, 110 ms at
# p50 in bench.generation, runs three short transactions and spends most of the rest waiting
# on billing and files), so this many calls per connection keep the pool busy without
# queueing for it past a deadline.
IN_FLIGHT_RPCS_PER_DB_CONNECTION = 8

# A gRPC server ends each connection after about this long (kit/server.py server_options), so
# callers of a service reached through DNS (Kubernetes: a headless Service) ask again and spread
# their calls over pods added since (docs/operations.md, "Balancing calls over replicas").
DEFAULT_MAX_CONNECTION_AGE_SECONDS = 300.0
# The longest call the platform opens, a stream through the gateway (its stream deadline, 900 s),
# and a minute: a call open when its connection ages still ends on its own.
DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS = 960.0

# A production secret has at least this many bytes: a random 256-bit value, not a word.
MIN_SECRET_BYTES = 32
ENVIRONMENT_VARIABLE = "STYLESTUDIO_ENVIRONMENT"
# sysexits' EX_CONFIG: a process that refused its configuration exits with it (retrying will not help).
EXIT_CONFIGURATION = 78
# Values that were published as examples (an older docker-compose.yml): public, so refused.
PUBLISHED_EXAMPLE_SECRETS = frozenset({"change-me-please-32-characters!!", "change-me-too"})
# Variables nothing reads any more, and what replaced each: a process that still gets one says so once.
RETIRED_VARIABLES = {
    "STYLESTUDIO_SERVICE_SECRET": "service credentials use each identity's own key"
    " (STYLESTUDIO_SERVICE_PRIVATE_KEY, STYLESTUDIO_SERVICE_PUBLIC_KEYS) and database roles"
    " their own password (STYLESTUDIO_<SERVICE>_DB_PASSWORD)",
    "STYLESTUDIO_MODEL_MULTIPLIERS": "billing prices each model by its multiplier in"
    " STYLESTUDIO_IMAGE_MODELS, the catalogue generation runs (kit/image_models.py)",
    "STYLESTUDIO_ASPECT_RATIOS": "the aspect ratios on offer are the keys of"
    " STYLESTUDIO_ASPECT_RATIO_MULTIPLIERS, which billing prices them by (kit/image_models.py)",
    **dict.fromkeys(
        (
            "STYLESTUDIO_DEFAULT_PAGE_SIZE",
            "STYLESTUDIO_MAX_PAGE_SIZE",
            "STYLESTUDIO_USAGE_PAGE_SIZE_DEFAULT",
            "STYLESTUDIO_USAGE_PAGE_SIZE_MAX",
        ),
        "every list pages as the API contract says, pageSize 20 by default and 100 at most (kit/paging.py)",
    ),
}


@dataclass(frozen=True)
class SecretCheck:
    """A secret that production needs, when ``required`` (the condition, e.g. "a Stripe key is set")."""

    variable: str
    value: str
    development_defaults: frozenset[str] = frozenset()
    required: bool = True

    def problem(self) -> str | None:
        if not self.required:
            return None
        if not self.value:
            return f"{self.variable} is not set"
        if self.value in self.development_defaults:
            return f"{self.variable} is a development default"
        if len(self.value.encode()) < MIN_SECRET_BYTES:
            return f"{self.variable} is shorter than {MIN_SECRET_BYTES} bytes"
        return None


@dataclass(frozen=True)
class DevelopmentOnly:
    """Something production refuses while ``in_use``: a test switch, a stand-in, a shortcut."""

    variable: str
    in_use: bool
    why: str

    def problem(self) -> str | None:
        return f"{self.variable}: {self.why}" if self.in_use else None


class InsecureSettings(Exception):
    """Production settings that would run with a missing, weak or public secret or a test switch."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"refusing to start with {ENVIRONMENT_VARIABLE}=production: "
            + "; ".join(problems)
            + f". Set each (docs/security.md), or {ENVIRONMENT_VARIABLE}=development on a developer's"
            " machine."
        )


class PlatformSettings(BaseSettings):
    """What every process of the platform shares: where things are, how to reach each other."""

    model_config = SettingsConfigDict(env_prefix="STYLESTUDIO_", extra="ignore")

    # Production unless said otherwise: `make run`, the tests and the benchmarks set
    # "development" explicitly; a deployment that forgets the variable gets the strict checks.
    environment: Environment = "production"

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

    # Service credentials: this process's private key (PEM text or a PEM file) and every
    # identity's public keys (JSON or a JSON file); empty in development means the development
    # keys, refused in production (kit/service_keys.py, docs/security.md).
    service_private_key: SecretStr = SecretStr("")
    service_public_keys: str = ""
    service_token_ttl_seconds: int = 300
    # How long a process keeps a user's credential state (role, plan, ended sessions) before
    # reading it again: changes are honoured for calls that start this long after (kit/credential_state.py).
    credential_state_cache_seconds: float = Field(default=0.5, ge=0.0, le=1.0)

    # Transport security of every gRPC port and channel (kit/tls.py; docs/kit.md, "Transport
    # security"). Off: plaintext, as on loopback. On: each process serves and presents its own
    # certificate (PEM chain and unencrypted key) and trusts peers the CA signed; services refuse
    # callers without a certificate unless require_client_cert is false.
    grpc_tls: bool = False
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_ca_file: str = ""
    grpc_tls_require_client_cert: bool = True
    # How often every gRPC connection with calls open is pinged; the services accept pings at
    # half this interval (kit/clients.py channel_options, kit/server.py server_options).
    grpc_keepalive_ms: int = Field(default=30_000, ge=100)
    # Every gRPC server ends each connection after this many seconds (gRPC adds +-10 %, so they do
    # not all end together): GOAWAY, new calls go to a new connection, and callers of a ``dns:``
    # address ask DNS again, finding the pods a scale-up added. 0: a connection lives as long as
    # both ends do (docs/operations.md, "Balancing calls over replicas").
    grpc_max_connection_age_seconds: float = Field(default=DEFAULT_MAX_CONNECTION_AGE_SECONDS, ge=0)
    # How long calls still open on an ended connection may run before it is closed under them:
    # at least the longest stream (the gateway refuses a stream deadline past it). Set both the
    # same for every process, as the ConfigMap does.
    grpc_max_connection_age_grace_seconds: float = Field(
        default=DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS, gt=0
    )

    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    # OTLP/gRPC collector endpoint (e.g. http://127.0.0.1:4317); empty: the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT if set, else traces are not exported (kit/telemetry.py).
    otel_exporter_otlp_endpoint: str = ""
    # Append finished (sampled) spans as JSON lines to this file (tests and local debugging).
    trace_file: str = ""
    # The local span store (kit/spanstore.py; `make run`: <data dir>/spans): each process appends
    # the spans it keeps to segments of its own in this directory; empty: none. Bounded in size
    # (plus one open segment per running process) and in age.
    span_store_dir: str = ""
    span_store_max_bytes: int = Field(default=DEFAULT_SPAN_STORE_BYTES, ge=64 * 1024)
    span_store_retention_hours: float = Field(default=DEFAULT_RETENTION_HOURS, gt=0)
    # Sampling (kit/sampling.py, docs/operations.md): the probability a new trace is sampled
    # (unset: 1.0 in development, kit.sampling.PRODUCTION_SAMPLE_RATIO in production, unless
    # OTEL_TRACES_SAMPLER is set); the span store also keeps a trace's failed or slow parts.
    trace_sample_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    trace_keep_slower_than_seconds: float = Field(default=10.0, gt=0)

    # The services' event loop: "uvloop" (C, several times cheaper per socket event, which
    # psycopg's async waits are full of) or "asyncio"; grpc.aio's poller works with both.
    event_loop: str = Field(default="uvloop", pattern="^(uvloop|asyncio)$")

    shutdown_grace_seconds: float = 10.0
    startup_timeout_seconds: float = 60.0
    migrate_on_start: bool = True
    # Migrations hold a session advisory lock, so they need a session of their own on PostgreSQL:
    # behind PgBouncer in transaction mode, set this to the service role's URL straight to
    # PostgreSQL (empty: the service's URL). docs/operations.md.
    migration_database_url: str | None = None
    # The connection budget (kit/budget.py, docs/operations.md): this process may hold
    # db_pool_size + db_max_overflow connections, plus one the kit opens beside the pool (a
    # migration's lock, the readiness check's schema check). Small enough that a platform (five
    # services) fits a stock PostgreSQL (97 slots) with room for a second one beside it.
    db_pool_size: int = Field(default=4, ge=1)
    db_max_overflow: int = Field(default=2, ge=0)
    db_pool_pre_ping: bool = False
    # At most this many server connections for this process (0: a fair share, the server's
    # available slots divided by db_processes); start-up warns when the pool may exceed it.
    db_connection_budget: int = Field(default=0, ge=0)
    # How many service processes share the server's slots (every replica of every service).
    db_processes: int = Field(default=5, ge=1)
    # psycopg's automatic server-side prepared statements; off behind PgBouncer in transaction
    # mode before 1.21 (a statement prepared on one server connection is missing on the next).
    db_prepared_statements: bool = True
    rpc_deadline_seconds: float = 10.0
    health_check_interval_seconds: float = 2.0

    # Events: outbox relay and consumers.
    outbox_poll_interval_seconds: float = 1.0
    outbox_batch_size: int = 256
    stream_max_length: int = 1_000_000
    consumer_block_ms: int = 1000
    consumer_claim_idle_ms: int = 30_000

    # Who may read a metrics endpoint, the gateway's /metrics and every service's metrics port
    # alike (kit/metrics.py MetricsAccess): a bearer token (`Authorization: Bearer <token>`)
    # and/or client networks (CIDRs, matched against the TCP peer; a request that came through a
    # proxy, with X-Forwarded-For or Forwarded, is then refused, since its peer is the proxy).
    # Both set: both must match. Neither set: open in development, 403 in production (the
    # counts of sign-ins, purchases and generations are business figures).
    metrics_bearer_token: SecretStr = SecretStr("")
    metrics_allow_networks: list[IPv4Network | IPv6Network] = []

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def variable_of(self, field: str) -> str:
        """The environment variable a field is read from (``STYLESTUDIO_`` + its name)."""
        return f"{self.model_config.get('env_prefix', '')}{field}".upper()

    def secret_check(
        self, field: str, *, required: bool = True, also_public: frozenset[str] = frozenset()
    ) -> SecretCheck:
        """The check of a secret field: its declared default counts as a development default."""
        value = getattr(self, field)
        default = type(self).model_fields[field].default
        defaults = {_plain(default)} | also_public | PUBLISHED_EXAMPLE_SECRETS
        return SecretCheck(self.variable_of(field), _plain(value), frozenset(defaults - {""}), required)

    def secret_checks(self) -> list[SecretCheck]:
        """The secrets production needs; a settings class extends the list (``super()`` first)."""
        # A metrics token, when used, is a secret like any other: no short or guessable one.
        token = self.metrics_bearer_token.get_secret_value()
        return [self.secret_check("metrics_bearer_token", required=bool(token))]

    def development_only(self) -> list[DevelopmentOnly]:
        """What production refuses while in use; a settings class extends the list."""
        return []

    def https_only(self, field: str, *, in_use: bool = True) -> DevelopmentOnly:
        """A provider URL that carries credentials: plain http is for local stand-ins (tests)."""
        plain_http = in_use and str(getattr(self, field)).lower().startswith("http://")
        return DevelopmentOnly(
            self.variable_of(field), plain_http, "plain http would carry credentials in the clear"
        )

    def service_key_problems(self) -> list[str]:
        """What production objects to in this process's service keys (kit/service_keys.py): a
        service signs and verifies; a settings class of a process that signs less overrides it."""
        from kit.service_keys import service_key_problems  # that module reads these settings

        return service_key_problems(self, verifies=True)

    def insecurities(self) -> list[str]:
        """Every reason production would refuse these settings, naming each variable."""
        found = [check.problem() for check in self.secret_checks()]
        found += [switch.problem() for switch in self.development_only()]
        found += self.service_key_problems()
        return [problem for problem in found if problem]

    def address_of(self, service: str) -> str:
        return str(getattr(self, f"{service}_addr"))


class ServiceSettings(PlatformSettings):
    """Base for a service's own typed settings; a service subclasses it to add its knobs."""

    service_name: str = ""
    # A second, plaintext port serving grpc.health.v1 and nothing else (e.g. 0.0.0.0:8081), for
    # probes that cannot speak TLS (the kubelet's gRPC probe); empty: none.
    health_addr: str = ""

    # Admission control (kit/admission.py): at most this many calls from outside (PUBLIC, USER,
    # ADMIN) run at once in this process; past it a new one is refused at once with RATE_LIMITED
    # and Retry-After. Unset: IN_FLIGHT_RPCS_PER_DB_CONNECTION times what the database pool can
    # lend (db_pool_size + db_max_overflow); 0 or less: no limit. INTERNAL calls are never
    # refused (they finish work already accepted) but count.
    max_in_flight_rpcs: int | None = None
    admission_retry_after_seconds: float = Field(default=1.0, ge=0.0)

    # Prometheus metrics on their own HTTP port, GET /metrics (kit/metrics.py; docs/operations.md,
    # "Metrics"), e.g. 0.0.0.0:9464 in a container; port 0: any free port (logged); empty: none.
    # Who may read them: metrics_bearer_token, metrics_allow_networks.
    metrics_addr: str = ""
    # Figures that cost a query (outbox, consumer groups, holds, queue depth) are read when a
    # scrape comes, at most once per this many seconds (scrapes in between get the last ones).
    metrics_refresh_seconds: float = Field(default=5.0, ge=0.0)

    @property
    def listen_addr(self) -> str:
        return self.address_of(self.service_name)

    @property
    def in_flight_limit(self) -> int | None:
        """The cap admission control applies (None: none)."""
        if self.max_in_flight_rpcs is None:
            return IN_FLIGHT_RPCS_PER_DB_CONNECTION * (self.db_pool_size + self.db_max_overflow)
        return self.max_in_flight_rpcs if self.max_in_flight_rpcs > 0 else None


def _plain(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value or "")


_warned: set[tuple[str, ...]] = set()


def refuse_insecure_settings(settings: PlatformSettings, log: logging.Logger) -> None:
    """At start-up: in production raise ``InsecureSettings`` naming every offending variable;
    in development log one warning listing them (once per process), and go on. Either way, log
    once that a retired variable still set is no longer used."""
    _warn_retired(log)
    problems = settings.insecurities()
    if not problems:
        return
    if settings.is_production:
        raise InsecureSettings(problems)
    if tuple(problems) in _warned:
        return
    _warned.add(tuple(problems))
    log.warning(
        "insecure settings, allowed only because %s=development: %s",
        ENVIRONMENT_VARIABLE,
        "; ".join(problems),
    )


def _warn_retired(log: logging.Logger) -> None:
    for variable, instead in RETIRED_VARIABLES.items():
        if variable in os.environ and (variable,) not in _warned:
            _warned.add((variable,))
            log.warning("%s is no longer used and can be removed: %s", variable, instead)
