"""Running a service: one call from a service's ``__main__`` does it all.

    run(ServiceDefinition(name="billing", settings=BillingSettings(), metadata=models.metadata,
                          servicers=register_servicers))

Start-up waits for PostgreSQL, runs the service's migrations (under an advisory
lock), starts grpc.aio with the kit's interceptors, health and reflection, the
outbox relay, event consumers and background loops. Health (readiness: the
server-wide "" entry and each gRPC service's) turns SERVING only while migrations
are at head and PostgreSQL and Redis answer; the ``liveness`` entry is SERVING from
the moment the process starts until it stops, whatever its dependencies do, and is
answered by the event loop, so it fails only when the process is gone or its loop
stuck. On SIGTERM/SIGINT: NOT_SERVING, then ``server.stop(grace)`` lets in-flight
RPCs finish, then background work is cancelled and connections closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import sqlalchemy as sa
from google.protobuf import descriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from kit import budget, migrations, telemetry
from kit.access import UserLookup, credential_state_lookup, method_access
from kit.admission import InFlightLimiter
from kit.auth import ServiceCredentials, UserTokenVerifier
from kit.clients import DEFAULT_KEEPALIVE_MS, ServiceClients, channel_options
from kit.credential_state import CredentialStates, CredentialStateStore
from kit.db import Database
from kit.events import EventConsumer, Outbox, OutboxRelay, event_tables
from kit.interceptors import Authenticator, KitServerInterceptor
from kit.logs import describe_error, setup_logging
from kit.metrics import MetricsAccess, MetricsEndpoint, ServiceMetrics
from kit.process_metrics import loop_lag_histogram, sample_loop_lag, watch_process
from kit.ratelimits import AllowanceReader, allowance_readers
from kit.reflection import enable_reflection
from kit.settings import (
    DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS,
    DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    EXIT_CONFIGURATION,
    InsecureSettings,
    PlatformSettings,
    ServiceSettings,
    refuse_insecure_settings,
)
from kit.tls import TransportSecurity, listen
from kit.tokens import users_service_states, users_service_verifier

log = logging.getLogger("stylestudio.server")


def server_options(
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS,
    max_connection_age_seconds: float = DEFAULT_MAX_CONNECTION_AGE_SECONDS,
    max_connection_age_grace_seconds: float = DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS,
) -> list[tuple[str, int]]:
    """The options of every gRPC server of the platform, for clients pinging every ``keepalive_ms``.

    gRPC's default server policy takes a ping less than 5 minutes after the previous one (while
    a call is open and the server sends nothing) as a strike, and closes the whole connection
    with GOAWAY "too_many_pings" at the third: a quiet watch stream pinged every 30 s lost its
    connection, and every call on it, after 90 s. Pings are accepted here at half the clients'
    interval (timers drift; a real abuser still gets struck), and on a connection without calls.
    (``grpc.http2.min_ping_interval_without_data_ms`` is the receiving side's minimum; the
    similarly named ``grpc.http2.min_recv_ping_interval_without_data_ms`` is no option of gRPC's.)

    A connection ends after ``max_connection_age_seconds`` (0: never), so that callers spread
    over replicas added since (``connection_age_options``).
    """
    return [
        *channel_options(keepalive_ms),  # a server pings its clients the same way
        ("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC sets SO_REUSEPORT by default, so a second process started on a port already in
        # use shares it silently and takes some of its calls; this makes that a failure at start-up.
        ("grpc.so_reuseport", 0),
        *connection_age_options(max_connection_age_seconds, max_connection_age_grace_seconds),
    ]


def connection_age_options(age_seconds: float, grace_seconds: float) -> list[tuple[str, int]]:
    """gRPC's maximum connection age: a client keeps one HTTP/2 connection per address for as long
    as it can, so without an end a caller that found one pod (or two) before a scale-up never
    uses the new ones. At the age the server sends GOAWAY: the client opens a new connection for
    its next calls (asking DNS again for a ``dns:`` target, kit.clients.channel_target) while the
    calls already open go on, for up to ``grace_seconds``, on the old one; then it is closed."""
    if age_seconds <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(age_seconds * 1000))),
        ("grpc.max_connection_age_grace_ms", round(grace_seconds * 1000)),
    ]


def server_options_of(settings: PlatformSettings) -> list[tuple[str, int]]:
    """``server_options`` as ``settings`` (STYLESTUDIO_GRPC_*) say."""
    return server_options(
        settings.grpc_keepalive_ms,
        settings.grpc_max_connection_age_seconds,
        settings.grpc_max_connection_age_grace_seconds,
    )


SERVER_OPTIONS = server_options()

# The health entry a liveness probe names (Kubernetes: ``grpc: {port: 8081, service: liveness}``):
# the process is up and its event loop answers. Readiness is the server-wide "" entry, which
# also needs PostgreSQL, Redis and the schema at head; a probe that restarted the process on
# those would restart every pod of the platform during a database outage (docs/operations.md).
LIVENESS = "liveness"


@dataclass
class Runtime:
    """What a running service has at hand; passed to the code that builds its servicers."""

    name: str
    settings: ServiceSettings
    db: Database
    redis: Redis
    outbox: Outbox
    inbox: sa.Table
    clients: ServiceClients
    credentials: ServiceCredentials
    # Its Prometheus registry: a service adds its own instruments and samplers (kit/metrics.py).
    metrics: ServiceMetrics

    @functools.cached_property
    def credential_states(self) -> CredentialStates:
        """Users' current credential state (Redis, else the users service), one per process:
        the token check and the standing of a user a service calls for share its cache."""

        def channel() -> grpc.aio.Channel:
            return self.clients.channel("users")

        s = self.settings
        store = CredentialStateStore(self.redis, s.redis_prefix)
        return users_service_states(channel, store, s.credential_state_cache_seconds)

    def consumer(self, group: str | None = None, **options: Any) -> EventConsumer:
        s = self.settings
        defaults: dict[str, Any] = {
            "block_ms": s.consumer_block_ms,
            "claim_idle_ms": s.consumer_claim_idle_ms,
        }
        return EventConsumer(
            self.db,
            self.redis,
            self.inbox,
            prefix=s.redis_prefix,
            group=group or self.name,
            **(defaults | options),
        )


@dataclass
class Registration:
    """A servicer and how to add it to the server."""

    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    service: descriptor.ServiceDescriptor
    # The caller's allowance, for the methods declaring rate-limit headers (kit/ratelimits.py).
    allowance: AllowanceReader | None = None


@dataclass
class ServiceDefinition:
    name: str
    settings: ServiceSettings
    metadata: sa.MetaData
    register: Callable[[Runtime], Sequence[Registration]]
    # Consumers and long-running loops (sweepers, workers) started after the server is up.
    consumers: Callable[[Runtime], Sequence[EventConsumer]] = lambda runtime: ()
    background: Callable[[Runtime], Sequence[Coroutine[Any, Any, None]]] = lambda runtime: ()
    # How user bearer tokens are verified in this process: by default with the users service's
    # JWKS and API-key lookup (kit.tokens), brought up to date with the user's credential state
    # (kit.credential_state); the users service plugs in its own key store and database.
    user_verifier: Callable[[Runtime], UserTokenVerifier | None] = field(
        default=lambda r: default_user_verifier(r)
    )
    # Where the plan and role of a user that a service calls for come from (kit/access.py): the
    # same credential state as the token check (the users service plugs in its own).
    user_lookup: Callable[[Runtime], UserLookup | None] = field(default=lambda r: default_user_lookup(r))
    on_shutdown: Sequence[Callable[[Runtime], Awaitable[None]]] = field(default_factory=tuple)


def default_user_verifier(runtime: Runtime) -> UserTokenVerifier:
    return users_service_verifier(lambda: runtime.clients.channel("users"), runtime.credential_states)


def default_user_lookup(runtime: Runtime) -> UserLookup:
    return credential_state_lookup(runtime.credential_states)


def database_url(settings: ServiceSettings) -> str:
    return settings.service_database_url or settings.database_url


def command_database(settings: ServiceSettings, schema: str) -> Database:
    """The database of an operator's command (promote, reconcile, confirm a payment): the
    service's own URL and settings, one connection."""
    return Database(
        database_url(settings),
        schema,
        pool_size=1,
        max_overflow=0,
        prepared_statements=settings.db_prepared_statements,
    )


def migration_database_url(settings: ServiceSettings) -> str:
    """Where migrations run: straight to PostgreSQL (they hold a session advisory lock)."""
    return settings.migration_database_url or database_url(settings)


class RunningService:
    """A started service: its server, runtime and background tasks (tests drive it in-process)."""

    def __init__(self, definition: ServiceDefinition) -> None:
        self.definition = definition
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.runtime: Runtime | None = None
        self.health = health.aio.HealthServicer()
        self.port: int = 0
        self.health_port: int = 0
        self.metrics_port: int = 0
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.admission = InFlightLimiter(None, 1.0, definition.name)
        self._tasks: list[asyncio.Task[None]] = []
        self._service_names: list[str] = []
        self._at_head = False

    async def start(self) -> None:
        d, settings = self.definition, self.definition.settings
        # Before anything listens or connects: production refuses weak secrets and test switches.
        refuse_insecure_settings(settings, log)
        security = TransportSecurity.from_settings(settings)  # a wrong file fails before any wait
        # Also before anything connects: each process's own key, refused in production when missing
        # or a development one (kit/service_keys.py).
        credentials = ServiceCredentials.from_settings(settings, d.name)
        telemetry.setup_telemetry(d.name, settings)
        # Alive from here on, ready later: the probes' port answers while the process waits for
        # PostgreSQL, so a pod started during a database outage waits instead of being restarted.
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if settings.health_addr:
            await self._serve_health_only(settings.health_addr)
        url = database_url(settings)
        await _wait_for_database(url, settings)
        if settings.migrate_on_start:
            await asyncio.to_thread(migrations.upgrade, d.name, migration_database_url(settings))
        db = Database(
            url,
            d.name,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pre_ping=settings.db_pool_pre_ping,
            prepared_statements=settings.db_prepared_statements,
        )
        await budget.check_service(db, settings)  # search_path fence; warns when the pool may not fit
        redis = Redis.from_url(settings.redis_url, decode_responses=False)
        outbox_table = d.metadata.tables[f"{d.name}.outbox"]
        inbox_table = d.metadata.tables[f"{d.name}.inbox"]
        runtime = Runtime(
            name=d.name,
            settings=settings,
            db=db,
            redis=redis,
            outbox=Outbox(d.name, outbox_table),
            inbox=inbox_table,
            clients=ServiceClients(settings, credentials),
            credentials=credentials,
            metrics=ServiceMetrics(settings.metrics_refresh_seconds),
        )
        self.runtime = runtime
        registrations = d.register(runtime)
        authenticator = Authenticator(credentials, d.user_verifier(runtime), d.user_lookup(runtime))
        access = method_access(r.service for r in registrations)
        self.admission = InFlightLimiter(
            settings.in_flight_limit, settings.admission_retry_after_seconds, d.name
        )
        allowances = allowance_readers((r.service, r.allowance) for r in registrations)
        interceptor = KitServerInterceptor(
            authenticator, access, self.admission, runtime.metrics.rpc, allowances
        )
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=server_options_of(settings),
        )
        for registration in registrations:
            registration.add_to_server(registration.servicer, server)
        self._service_names = [r.service.full_name for r in registrations]
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(
            [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
        )
        self.port = listen(server, settings.listen_addr, security)
        if self.port == 0:
            raise RuntimeError(f"{d.name}: cannot listen on {settings.listen_addr}")
        await server.start()
        self.server = server
        relay = OutboxRelay(
            db,
            redis,
            runtime.outbox,
            prefix=settings.redis_prefix,
            batch_size=settings.outbox_batch_size,
            poll_interval=settings.outbox_poll_interval_seconds,
            max_length=settings.stream_max_length,
        )
        self._spawn(self._watch_health(), "health")
        self._spawn(relay.run(), "outbox-relay")
        consumers = list(d.consumers(runtime))
        for consumer in consumers:
            self._spawn(consumer.run(), f"consumer-{consumer.name}")
        for index, loop in enumerate(d.background(runtime)):
            self._spawn(loop, f"background-{index}")
        self._serve_metrics(runtime, consumers)
        log.info(
            "listening", extra={"addr": settings.listen_addr, "port": self.port, "tls": security is not None}
        )

    async def _serve_health_only(self, address: str) -> None:
        """The probes' port: the same health statuses, no other service, no TLS."""
        server = grpc.aio.server(options=server_options_of(self.definition.settings))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise RuntimeError(f"{self.definition.name}: cannot listen on {address}")
        await server.start()
        self.health_server = server

    def _serve_metrics(self, runtime: Runtime, consumers: Sequence[EventConsumer]) -> None:
        """The kit's figures of this process, and its metrics port when one is set."""
        metrics, settings = runtime.metrics, runtime.settings
        watch_process(
            metrics, runtime.db, runtime.redis, settings.redis_prefix, runtime.outbox.table, consumers
        )
        self._spawn(sample_loop_lag(loop_lag_histogram(metrics.registry)), "loop-lag")
        metrics.bind_loop(asyncio.get_running_loop())
        if settings.metrics_addr:
            try:
                endpoint = MetricsEndpoint(
                    metrics, MetricsAccess.from_settings(settings), settings.metrics_addr
                )
            except (OSError, ValueError) as error:  # a port in use, a malformed address
                raise RuntimeError(
                    f"{self.definition.name}: cannot serve metrics on {settings.metrics_addr}: {error}"
                ) from None
            endpoint.start()
            self._metrics_endpoint, self.metrics_port = endpoint, endpoint.port
            log.info("metrics", extra={"addr": settings.metrics_addr, "port": endpoint.port})

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=f"{self.definition.name}:{name}")
        task.add_done_callback(_report_crash)
        self._tasks.append(task)

    async def check_ready(self) -> bool:
        """PostgreSQL and Redis answer, and the schema is at the head migration."""
        runtime = self.runtime
        assert runtime is not None
        try:
            async with asyncio.timeout(2.0):
                await runtime.db.ping()
                await runtime.redis.ping()
            if not self._at_head:  # once at head, a running process stays there
                url = migration_database_url(runtime.settings)
                self._at_head = await asyncio.to_thread(migrations.is_at_head, self.definition.name, url)
            return self._at_head
        except Exception as error:  # any failure of a dependency means "not ready", never a crash
            log.warning("not ready", extra={"error": describe_error(error)})
            return False

    async def _watch_health(self) -> None:
        serving: bool | None = None
        while True:
            ready = await self.check_ready()
            if ready != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ["", *self._service_names]:
                    await self.health.set(name, status)
                serving = ready
                log.info("health", extra={"serving": ready})
            await asyncio.sleep(self.definition.settings.health_check_interval_seconds)

    async def stop(self) -> None:
        """Graceful: stop taking calls, let in-flight RPCs finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.definition.settings.shutdown_grace_seconds)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self._metrics_endpoint is not None:
            await asyncio.to_thread(self._metrics_endpoint.stop)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task that will not end must not keep the process from stopping.
            grace = self.definition.settings.shutdown_grace_seconds
            _, stragglers = await asyncio.wait(self._tasks, timeout=grace)
            for task in stragglers:
                log.error("background task did not stop", extra={"task": task.get_name()})
        runtime = self.runtime
        if runtime is not None:
            for hook in self.definition.on_shutdown:
                await hook(runtime)
            await runtime.clients.close()
            await runtime.redis.aclose()
            await runtime.db.dispose()


async def serve(definition: ServiceDefinition) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    setup_logging(definition.name, definition.settings.log_level, definition.settings.log_format)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    service = RunningService(definition)
    await service.start()
    await stopping.wait()
    log.info("shutting down", extra={"grace_seconds": definition.settings.shutdown_grace_seconds})
    await service.stop()
    telemetry.shutdown_telemetry()
    log.info("stopped")


def run(definition: ServiceDefinition) -> None:
    loop_factory = None
    if definition.settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            runner.run(serve(definition))
        except InsecureSettings as refusal:
            log.critical(str(refusal))
            sys.exit(EXIT_CONFIGURATION)


async def _wait_for_database(url: str, settings: ServiceSettings) -> None:
    """The pre-start step: PostgreSQL may still be starting (compose, Kubernetes)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(sa.exc.OperationalError),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            stop=stop_after_delay(settings.startup_timeout_seconds),
            reraise=True,
        ):
            with attempt:
                await asyncio.to_thread(_ping_sync, engine)
    finally:
        engine.dispose()


def _ping_sync(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


def _report_crash(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background task crashed", extra={"task": task.get_name()}, exc_info=error)


__all__ = ["Registration", "RunningService", "Runtime", "ServiceDefinition", "event_tables", "run", "serve"]
