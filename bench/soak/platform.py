"""The soak platform: the whole platform on its own embedded PostgreSQL and Redis.

Started by the soak command itself in a scratch folder, so the fault injector can restart
PostgreSQL and Redis, kill and pause processes, without touching the machine's shared servers.
Two processes each of the generation and files services (sharing their consumer groups,
reached through one balanced address), one of every other service and the gateway; the
sweeper's deadline and the workers' leases are short, so a run settles within a minute.
One model (``REPLICATE_MODEL``) runs on the Replicate provider, against a local server speaking
Replicate's API (tests/generation/replicate_server.py) that finishes each prediction itself
after ``REPLICATE_SECONDS`` and sends its signed webhooks to the gateway; the other models run
on the local provider.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from kit.infra import EmbeddedPostgres, EmbeddedRedis
from kit.settings import SERVICES
from services.generation.settings import DEFAULT_MODELS
from tests.generation.replicate_server import FakeReplicate, ReplicateServer
from tests.harness import Platform, TestDatabase, service_of

# Known in development only: the load signs its purchases' payment events with it.
WEBHOOK_SECRET = "whsec_soak_offline_payments_secret"
REPLICAS = {"generation": 2, "files": 2}

# Every generation is terminal this long after it started (the sweeper fails it then).
GENERATION_DEADLINE_SECONDS = 60.0
# The sweeper's pass and the leases: a killed or paused worker's job is taken over within
# seconds, well inside the deadline.
SWEEPER_INTERVAL_SECONDS = 2.0
WORKER_LEASE_SECONDS = 10.0
CONSUMER_CLAIM_IDLE_MS = 8_000

# The model whose generations go to (the local) Replicate, and how long a prediction runs there.
REPLICATE_MODEL = "dall-e-3"
REPLICATE_VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
REPLICATE_SECONDS = 2.0
# The models the load picks from (a name twice: twice as often): a third on Replicate.
LOAD_MODELS = ("stable-diffusion-xl", "stable-diffusion-xl", REPLICATE_MODEL)


def soak_env() -> dict[str, str]:
    unlimited = {plan: 1_000_000 for plan in ("free", "basic", "pro", "enterprise")}
    return {
        "STYLESTUDIO_LOG_LEVEL": "WARNING",
        "STYLESTUDIO_TRACE_FILE": "",
        "STYLESTUDIO_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STYLESTUDIO_HOURLY_GENERATION_LIMITS": json.dumps(unlimited),
        "STYLESTUDIO_LOCAL_PROVIDER_FAULT_SWITCH": "true",
        "STYLESTUDIO_GENERATION_WORKERS": "4",
        "STYLESTUDIO_GENERATION_DEADLINE_SECONDS": str(GENERATION_DEADLINE_SECONDS),
        "STYLESTUDIO_HOLD_EXPIRY_MARGIN_SECONDS": "60",
        "STYLESTUDIO_SWEEPER_INTERVAL_SECONDS": str(SWEEPER_INTERVAL_SECONDS),
        "STYLESTUDIO_WORKER_LEASE_SECONDS": str(WORKER_LEASE_SECONDS),
        "STYLESTUDIO_START_ABANDONED_AFTER_SECONDS": "10",
        "STYLESTUDIO_QUEUED_REQUEUE_AFTER_SECONDS": "15",
        "STYLESTUDIO_RESOLUTION_RETRY_AFTER_SECONDS": "2",
        "STYLESTUDIO_CONSUMER_CLAIM_IDLE_MS": str(CONSUMER_CLAIM_IDLE_MS),
        # small pools: seven processes share one embedded server (100 connections)
        "STYLESTUDIO_DB_POOL_SIZE": "4",
        "STYLESTUDIO_DB_MAX_OVERFLOW": "4",
        "STYLESTUDIO_DB_CONNECTIONS_BESIDE_WORKERS": "3",
        # a webhook lost to a fault (the gateway down): the prediction is polled soon after
        "STYLESTUDIO_REPLICATE_POLL_INTERVAL_SECONDS": "3",
        "STYLESTUDIO_IMAGE_MODELS": json.dumps(
            [model.model_dump() for model in DEFAULT_MODELS if model.name != REPLICATE_MODEL]
            + [
                {
                    "name": REPLICATE_MODEL,
                    "display_name": "DALL-E 3",
                    "multiplier": 2.0,
                    "provider": "replicate",
                    "replicate_version": REPLICATE_VERSION,
                }
            ]
        ),
    }


def replicate_env(replicate: FakeReplicate, gateway_url: str) -> dict[str, str]:
    """The generation service's Replicate settings: the local server, its webhooks to the gateway."""
    return {
        "STYLESTUDIO_REPLICATE_BASE_URL": replicate.url,
        "STYLESTUDIO_REPLICATE_API_TOKEN": replicate.api_token,
        "STYLESTUDIO_REPLICATE_WEBHOOK_SECRET": replicate.secret,
        "STYLESTUDIO_REPLICATE_WEBHOOK_URL": f"{gateway_url}/webhooks/replicate",
    }


def process_names() -> list[str]:
    """The soak platform's processes, in the order the fault schedule draws from."""
    names = []
    for service in SERVICES:
        names += [service, *(f"{service}-{index}" for index in range(2, REPLICAS.get(service, 1) + 1))]
    return [*names, "gateway"]


def _servers(folder: Path) -> tuple[EmbeddedPostgres, EmbeddedRedis]:
    folder.mkdir(parents=True, exist_ok=True)
    postgres = EmbeddedPostgres.start(folder / "postgres")
    try:
        return postgres, EmbeddedRedis.start(folder / "redis")
    except BaseException:
        postgres.stop()
        raise


@dataclass
class SoakPlatform:
    """The running soak platform and its servers; ``close()`` stops everything it started."""

    folder: Path
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    database: TestDatabase
    platform: Platform
    replicate_server: ReplicateServer
    # a process restarted by the fault injector: SIGCONT is owed to a paused one
    paused: set[str] = field(default_factory=set)

    @classmethod
    async def start(cls, folder: Path, extra_env: dict[str, str] | None = None) -> SoakPlatform:
        postgres, redis = await asyncio.to_thread(_servers, folder)
        database = TestDatabase(postgres.admin_url())
        platform = Platform(
            database, redis.url, folder, extra_env=soak_env() | (extra_env or {}), replicas=REPLICAS
        )
        replicate_server = ReplicateServer(FakeReplicate(complete_after=REPLICATE_SECONDS))
        platform.add_env(replicate_env(replicate_server.fake, platform.gateway_url))
        soak = cls(folder, postgres, redis, database, platform, replicate_server)
        try:
            replicate_server.start()
            await asyncio.to_thread(database.create)
            await platform.start_all()
        except BaseException:
            await soak.close()
            raise
        return soak

    @property
    def gateway_url(self) -> str:
        return self.platform.gateway_url

    @property
    def replicate(self) -> FakeReplicate:
        """The local Replicate: its predictions, and every webhook it sent."""
        return self.replicate_server.fake

    @property
    def admin_url(self) -> str:
        return self.database.admin_url

    @property
    def processes(self) -> list[str]:
        """Every process of the platform: the services' replicas and the gateway."""
        processes = [*self.platform.service_processes, "gateway"]
        assert processes == process_names(), processes
        return processes

    def pid(self, process: str) -> int | None:
        proc = self.platform.processes.get(process)
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, process: str) -> None:
        """SIGKILL: no shutdown, no cleanup, in-flight work cut where it stood."""
        self.platform.stop(process, signal.SIGKILL)
        self.paused.discard(process)

    async def restart(self, process: str, timeout: float = 60.0) -> None:
        if process in self.platform.processes:
            self.platform.stop(process, signal.SIGKILL)
        self.platform.start(process)
        if process == "gateway":
            await self.platform.wait_ready(timeout, ())
        else:
            await self.platform.wait_serving(process, timeout)

    def pause(self, process: str) -> None:
        pid = self.pid(process)
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)
            self.paused.add(process)

    def resume(self, process: str) -> None:
        pid = self.pid(process)
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        self.paused.discard(process)

    async def ensure_running(self) -> list[str]:
        """Start again any process that is not running (resume paused ones); the names restarted."""
        for process in list(self.paused):
            self.resume(process)
        restarted = []
        for process in self.processes:
            if self.pid(process) is None:
                await self.restart(process)
                restarted.append(process)
        return restarted

    def service_of(self, process: str) -> str:
        return service_of(process)

    async def close(self) -> None:
        for process in list(self.paused):
            self.resume(process)
        try:
            await self.platform.close()
        except Exception:  # Redis may be down when a run is cut short; stop the rest anyway
            self.platform.stop_all()
        self.replicate_server.stop()
        self.redis.stop()
        self.postgres.stop()
