"""Start the real services as subprocesses against a fresh database and a Redis key prefix."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import psycopg
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from kit.auth import ServiceCredentials
from kit.bootstrap import ProvisioningSettings, provision_sync
from kit.clients import open_channel
from kit.credential_state import CredentialState, state_key
from kit.service_keys import IDENTITIES, generate_signing_identity
from kit.settings import SERVICES
from kit.spanstore import SPANS_FOLDER
from kit.tokens import generate_signing_key, sign_access_token, signing_keys_to_json
from tests.harness.identities import Keyring
from tests.harness.pki import PlatformCertificates

REPO_ROOT = Path(__file__).resolve().parents[2]
StubT = TypeVar("StubT")


# A gRPC service each process alone serves, whose health entry shows that process is up.
HEALTH_NAMES = {
    "users": "stylestudio.users.v1.AuthService",
    "billing": "stylestudio.billing.v1.BillingService",
    "files": "stylestudio.files.v1.FilesService",
    "generation": "stylestudio.generation.v1.GenerationService",
    "analytics": "stylestudio.analytics.v1.AnalyticsService",
}

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now that this test run has not handed out before.

    The kernel may give the same ephemeral port to two ``bind(0)`` calls in a row once the
    first socket is closed; two processes of one platform given the same address would
    leave one of them unable to bind and the other answering in its place.
    """
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class TestDatabase:
    """A fresh database for one test run, with the services' roles and schemas, dropped afterwards."""

    __test__ = False

    def __init__(self, server_url: str) -> None:
        self.name = f"stylestudio_test_{uuid.uuid4().hex[:10]}"
        base = make_url(server_url)
        self._maintenance_dsn = _libpq_dsn(base.set(database="postgres"))
        self.admin_url = base.set(database=self.name).render_as_string(hide_password=False)
        self.service_urls: dict[str, str] = {}

    def create(
        self,
        services: Sequence[str] = SERVICES,
        migrate: bool = True,
        settings: ProvisioningSettings | None = None,
    ) -> None:
        """Roles' passwords: development's (generated and kept), unless ``settings`` say otherwise."""
        with psycopg.connect(self._maintenance_dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        settings = settings or ProvisioningSettings(environment="development")
        self.service_urls = provision_sync(self.admin_url, services, migrate=migrate, settings=settings)

    def drop(self) -> None:
        with psycopg.connect(self._maintenance_dsn, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@contextmanager
def own_database(
    infrastructure: object,
    services: Sequence[str] = SERVICES,
    migrate: bool = True,
    settings: ProvisioningSettings | None = None,
) -> Iterator[TestDatabase]:
    """A database of one's own on the run's server (``TestDatabase.create``'s arguments), dropped
    afterwards: for tests whose services must not share the session's database."""
    database = TestDatabase(infrastructure.database_url)  # type: ignore[attr-defined]
    database.create(services, migrate=migrate, settings=settings)
    try:
        yield database
    finally:
        database.drop()


@asynccontextmanager
async def own_platform(
    infrastructure: object, redis_url: str, work_dir: Path, **options: Any
) -> AsyncIterator[Platform]:
    """A started platform on a database of its own, stopped and dropped afterwards: for tests whose
    settings or faults must not reach the session's platform. ``options`` are ``Platform``'s
    (``extra_env``, ``process_env``, ``replicas``, ``tls``)."""
    with own_database(infrastructure) as database:
        async with Platform(database, redis_url, work_dir, **options) as running:
            await running.start_all()
            yield running


def _libpq_dsn(url: object) -> str:
    sa_url = make_url(str(url)) if not hasattr(url, "set") else url
    return sa_url.set(drivername="postgresql").render_as_string(hide_password=False)  # type: ignore[attr-defined]


def service_of(process: str) -> str:
    """The service a process runs: ``files-2`` (a replica) runs ``files``."""
    return process.rsplit("-", 1)[0] if process.rsplit("-", 1)[-1].isdigit() else process


class Platform:
    """The five services and the gateway, each a real process, on free ports."""

    def __init__(
        self,
        database: TestDatabase,
        redis_url: str,
        work_dir: Path,
        extra_env: Mapping[str, str] | None = None,
        tls: PlatformCertificates | None = None,
        process_env: Mapping[str, Mapping[str, str]] | None = None,
        replicas: Mapping[str, int] | None = None,
    ) -> None:
        self.database = database
        self.redis_url = redis_url
        self.redis_prefix = f"sstest:{uuid.uuid4().hex[:8]}"
        self.work_dir = work_dir
        # Each service's processes ("files", then "files-2", ...), each on its own port; callers
        # reach a service through all of its replicas' addresses (balanced round robin).
        self.instance_addresses: dict[str, str] = {}
        for service in SERVICES:
            for index in range(max(1, (replicas or {}).get(service, 1))):
                name = service if index == 0 else f"{service}-{index + 1}"
                self.instance_addresses[name] = f"127.0.0.1:{free_port()}"
        self.addresses = {
            service: ",".join(self.instance_addresses[name] for name in self.instances(service))
            for service in SERVICES
        }
        self.gateway_addr = f"127.0.0.1:{free_port()}"
        # Each service process's Prometheus port (the gateway serves its own on gateway_addr).
        self.metrics_addresses = {name: f"127.0.0.1:{free_port()}" for name in self.instance_addresses}
        self.trace_file = work_dir / "spans.jsonl"
        # The local span store where `make run` keeps it: under the data directory.
        self.data_dir = work_dir / "data"
        self.span_store_dir = self.data_dir / SPANS_FOLDER
        # A fresh key per identity for this run, given to each process as production would.
        self.keyring = Keyring({identity: generate_signing_identity(identity) for identity in IDENTITIES})
        # The users service signs with this key, so tests can also mint tokens for made-up users.
        self.signing_key = generate_signing_key("test-key-1")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._extra_env = dict(extra_env or {})
        # More environment for one process only (e.g. a service's database URL through PgBouncer).
        self._process_env = {process: dict(env) for process, env in (process_env or {}).items()}
        # Mutual TLS on every gRPC port and channel, HTTPS on the gateway; None: plaintext.
        self.tls = tls
        self._security = tls.security() if tls is not None else None
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> Platform:
        return self

    def add_env(self, env: Mapping[str, str]) -> None:
        """More environment for every process started from now on (e.g. the gateway's URL,
        known once the platform picked its ports)."""
        self._extra_env |= env

    def instances(self, service: str) -> list[str]:
        """The process names of ``service``'s replicas: ``service``, ``service-2``, ..."""
        return [name for name in self.instance_addresses if service_of(name) == service]

    @property
    def service_processes(self) -> list[str]:
        """Every service process, replicas included."""
        return list(self.instance_addresses)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def gateway_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.gateway_addr}"

    @property
    def gateway_verify(self) -> ssl.SSLContext | bool:
        """What an HTTP client of the gateway passes as ``verify``."""
        return self.tls.https_context() if self.tls is not None else True

    def client(self, **options: Any) -> httpx.AsyncClient:
        """An HTTP client of the gateway (``options``: httpx's, e.g. ``transport``)."""
        return httpx.AsyncClient(
            base_url=self.gateway_url, verify=self.gateway_verify, **({"timeout": 30.0} | options)
        )

    def env(self, process: str) -> dict[str, str]:
        """``process``'s environment: a service's replica (``files-2``) listens on its own address,
        and calls the other services through all of their replicas' addresses."""
        service = service_of(process)
        env = {key: value for key, value in os.environ.items() if not key.startswith("STYLESTUDIO_")}
        env.update(
            {
                "STYLESTUDIO_ENVIRONMENT": "development",
                "STYLESTUDIO_DATABASE_URL": self.database.admin_url,
                "STYLESTUDIO_REDIS_URL": self.redis_url,
                "STYLESTUDIO_REDIS_PREFIX": self.redis_prefix,
                "STYLESTUDIO_GATEWAY_ADDR": self.gateway_addr,
                # signed file links absolute on the gateway, as `make run` makes them (kit/launcher.py)
                "STYLESTUDIO_FILE_URL_BASE": self.gateway_url,
                "STYLESTUDIO_TRACE_FILE": str(self.trace_file),
                "STYLESTUDIO_DATA_DIR": str(self.data_dir),
                "STYLESTUDIO_SPAN_STORE_DIR": str(self.span_store_dir),
                "STYLESTUDIO_HEALTH_CHECK_INTERVAL_SECONDS": "0.3",
                "STYLESTUDIO_CONSUMER_BLOCK_MS": "200",
                "STYLESTUDIO_LOG_FORMAT": "text",
                "STYLESTUDIO_MIGRATE_ON_START": "false",
                "STYLESTUDIO_JWT_SIGNING_KEYS": signing_keys_to_json([self.signing_key]),
                "STYLESTUDIO_SERVICE_PUBLIC_KEYS": self.keyring.public_keys_json(),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for called, addr in self.addresses.items():
            env[f"STYLESTUDIO_{called.upper()}_ADDR"] = addr
        if process in self.instance_addresses:
            env[f"STYLESTUDIO_{service.upper()}_ADDR"] = self.instance_addresses[process]
            env["STYLESTUDIO_METRICS_ADDR"] = self.metrics_addresses[process]
            env["STYLESTUDIO_METRICS_REFRESH_SECONDS"] = "0"  # a test's scrape sees the latest figures
        if service in self.database.service_urls:
            env["STYLESTUDIO_SERVICE_DATABASE_URL"] = self.database.service_urls[service]
        if self.tls is not None:
            env.update(self.tls.env(service))
        if service in self.keyring.keys:
            env["STYLESTUDIO_SERVICE_PRIVATE_KEY"] = self.keyring.keys[service].private_pem()
        env.update(self._extra_env)
        env.update(self._process_env.get(process, {}))
        return env

    def metrics_url(self, process: str) -> str:
        """Where ``process`` (a service process, or "gateway") serves its Prometheus metrics."""
        if process == "gateway":
            return f"{self.gateway_url}/metrics"
        return f"http://{self.metrics_addresses[process]}/metrics"

    def log_path(self, process: str) -> Path:
        return self.work_dir / f"{process}.log"

    def start(self, process: str) -> None:
        module = "gateway" if process == "gateway" else f"services.{service_of(process)}"
        log = self.log_path(process).open("ab")
        self.processes[process] = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO_ROOT, env=self.env(process), stdout=log, stderr=log
        )

    def stop(self, process: str, sig: int | None = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` (None: it was sent already) and wait for the exit, SIGKILL after ``timeout``."""
        proc = self.processes.pop(process)
        if proc.poll() is None and sig is not None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        """Every process is sent SIGTERM before any is waited for: each still shuts down gracefully,
        but the platform stops in the time of its slowest process, not the sum of all of them
        (about half a second each, a few seconds per platform in every module's teardown)."""
        stopping = list(self.processes)
        for process in stopping:
            if self.processes[process].poll() is None:
                self.processes[process].send_signal(signal.SIGTERM)
        for process in stopping:
            self.stop(process, sig=None)

    def logs(self, process: str) -> str:
        path = self.log_path(process)
        return path.read_text(errors="replace") if path.exists() else ""

    def user_token(
        self, user_id: str | None = None, *, plan: str = "free", role: str = "user"
    ) -> tuple[str, str]:
        """``(user_id, access token)`` for a user, signed with the users service's key.

        For tests of a service's own behaviour; tests of sign-up go through the users service.
        The user exists only in Redis: the harness stores its credential state (role and plan)
        the way the users service would, so the services' token check accepts it.
        """
        user_id = user_id or str(uuid.uuid4())
        self.store_credential_state(user_id, CredentialState(version=0, role=role, plan=plan))
        return user_id, sign_access_token(self.signing_key, user_id=user_id, plan=plan, role=role)

    def store_credential_state(self, user_id: str, state: CredentialState, prefix: str = "") -> None:
        """Store ``state`` under this platform's Redis prefix, or ``prefix`` (a service started
        beside the platform on a prefix of its own)."""
        key = state_key(prefix or self.redis_prefix, user_id)
        with redis.Redis.from_url(self.redis_url) as client:
            client.hset(key, mapping={"v": state.version, "state": state.to_json()})
            client.expire(key, 24 * 3600)

    @staticmethod
    def bearer(token: str) -> tuple[tuple[str, str]]:
        """gRPC metadata presenting ``token`` (use with ``user_channel``)."""
        return (("authorization", f"Bearer {token}"),)

    def key_settings(self, identity: str) -> dict[str, Any]:
        """Settings giving an in-process service ``identity``'s key and this run's public key set,
        so it and the platform's processes accept each other's credentials."""
        return {
            "service_private_key": self.keyring.keys[identity].private_pem(),
            "service_public_keys": self.keyring.public_keys_json(),
        }

    def credentials(self, identity: str) -> ServiceCredentials:
        """``identity``'s service credential, signed with the key its process was given."""
        return self.keyring.credentials(identity)

    def channel(self, service: str) -> grpc.aio.Channel:
        """A channel to ``service`` whose INTERNAL calls present the credential of a caller the
        protos declare for each (tests/harness/identities.py); other calls carry none of their own."""
        if service not in self._channels:
            self._channels[service] = self.keyring.channel(self.addresses[service], 10.0, self._security)
        return self._channels[service]

    def user_channel(self, service: str) -> grpc.aio.Channel:
        """A channel that presents no credential of its own (pass a user's in metadata)."""
        return open_channel(self.addresses[service], None, 10.0, self._security)

    def stub(self, service: str, stub_type: type[StubT]) -> StubT:
        return stub_type(self.channel(service))  # type: ignore[call-arg]

    async def health(self, process: str) -> str:
        """The health of a service process's own gRPC service (not the server-wide "" entry, which
        any of the platform's processes would answer had it taken this address)."""
        key = f"instance:{process}"
        if key not in self._channels:
            address = self.instance_addresses[process]
            self._channels[key] = self.keyring.channel(address, 10.0, self._security)
        stub = health_pb2_grpc.HealthStub(self._channels[key])
        request = health_pb2.HealthCheckRequest(service=HEALTH_NAMES[service_of(process)])
        try:
            response = await stub.Check(request, timeout=1.0)
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def wait_serving(self, service: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.health(service) == "SERVING":
                return
            self._fail_if_exited(service)
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{service} not SERVING after {timeout}s:\n{self.logs(service)[-4000:]}")

    async def wait_ready(self, timeout: float = 60.0, services: Collection[str] = SERVICES) -> None:
        """Until the gateway's /readyz reports each of ``services`` SERVING (all five: 200)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.gateway_url, verify=self.gateway_verify) as client:
            while time.monotonic() < deadline:
                try:
                    statuses = (await client.get("/readyz")).json()["services"]
                    if all(statuses.get(service) == "SERVING" for service in services):
                        return
                except (httpx.TransportError, ValueError, KeyError):  # not up yet
                    pass
                for process in list(self.processes):
                    if process == "gateway" or service_of(process) in services:
                        self._fail_if_exited(process)
                await asyncio.sleep(0.2)
        raise TimeoutError(
            "gateway /readyz not ready:\n"
            + "\n".join(f"--- {p}\n{self.logs(p)[-2000:]}" for p in self.processes)
        )

    def _fail_if_exited(self, process: str) -> None:
        proc = self.processes.get(process)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{process} exited with {proc.returncode}:\n{self.logs(process)[-4000:]}")

    async def start_and_wait(self, *processes: str, timeout: float = 60.0) -> None:
        """Start ``processes`` (services, and "gateway"), then wait until each service is SERVING
        and, with the gateway, until its /readyz answers with them SERVING."""
        for process in processes:
            self.start(process)
        services = [process for process in processes if process != "gateway"]
        for service in services:
            await self.wait_serving(service, timeout)
        if "gateway" in processes:
            await self.wait_ready(timeout, list(dict.fromkeys(map(service_of, services))))

    async def start_all(self) -> None:
        await self.start_and_wait(*self.instance_addresses, "gateway")

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self.stop_all()
        redis = Redis.from_url(self.redis_url)
        try:
            async for key in redis.scan_iter(match=f"{self.redis_prefix}:*", count=1000):
                await redis.delete(key)
        finally:
            await redis.aclose()
