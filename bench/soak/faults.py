"""The fault injector of soak runs: one fault every few seconds, on a schedule drawn from a seed.

Each fault is written to ``faults.jsonl`` as ``{"kind", "target", "started", "ended",
"dependency_down"}`` (unix seconds; ``dependency_down``: a dependency of the platform was
unreachable meanwhile, so a 503 then is an answer, not a violation). The same seed gives the
same faults in the same order against the same targets: ``SEED=... make soak`` replays a run.

Kinds:
  kill               SIGKILL a service process or the gateway, start it again
  pause              SIGSTOP a process for longer than the workers' lease and the consumers'
                     claim time (others take its work over), then SIGCONT
  restart_redis      stop Redis (SHUTDOWN, or SIGKILL: a crash) and start it again
  terminate_backends pg_terminate_backend every connection of the services
  restart_postgres   stop PostgreSQL (fast: connections cut) and start it again
  provider_fail      the local provider fails every try like a timeout, for a while
  provider_stall     the local provider holds every try longer than a lease, for a while
  provider_slow      the local provider takes seconds per try, for a while
  stripe_webhooks    payment events the load sent, delivered again: twice, late, out of order
  replicate_webhooks webhooks the local Replicate sent about finished predictions, delivered
                     again, re-signed with a fresh timestamp: the "completed" one twice (its
                     own id, then a new one), then the older "start" one (out of order)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psycopg
import redis

from bench.load.webhooks import webhook_headers
from bench.soak.platform import CONSUMER_CLAIM_IDLE_MS, WEBHOOK_SECRET, WORKER_LEASE_SECONDS, SoakPlatform
from kit.infra import libpq_url
from services.generation.faults import provider_fault_key
from tests.generation.replicate_server import SentWebhook

log = logging.getLogger("bench.soak.faults")

KINDS = (
    "kill",
    "pause",
    "restart_redis",
    "terminate_backends",
    "restart_postgres",
    "provider_fail",
    "provider_stall",
    "provider_slow",
    "stripe_webhooks",
    "replicate_webhooks",
)
# How long a dependency stays down, and a provider fault lasts.
DOWN_SECONDS = 2.0
PROVIDER_FAULT_SECONDS = 12.0
PAUSE_SECONDS = max(WORKER_LEASE_SECONDS, CONSUMER_CLAIM_IDLE_MS / 1000) + 4.0
# Webhooks re-delivered per fault, and how late (beyond their first delivery) at least.
REDELIVERED_WEBHOOKS = 6
# A prediction's outcome: its webhook is the last one Replicate sends.
FINISHED = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str


@dataclass
class FaultRecord:
    kind: str
    target: str
    started: float
    ended: float
    dependency_down: bool


def schedule(seed: int, count: int, processes: Sequence[str], kinds: Sequence[str] = KINDS) -> list[Fault]:
    """The faults of a run with ``seed``, in order: the same for the same seed, processes and kinds."""
    rng = random.Random(seed)
    faults = []
    for _ in range(count):
        kind = rng.choice(list(kinds))
        target = rng.choice(list(processes)) if kind in ("kill", "pause") else _default_target(kind)
        faults.append(Fault(kind, target))
    return faults


def _default_target(kind: str) -> str:
    if kind in ("restart_redis",):
        return "redis"
    if kind in ("terminate_backends", "restart_postgres"):
        return "postgres"
    if kind.startswith("provider_"):
        return "local-provider"
    if kind == "replicate_webhooks":
        return "replicate"
    return "gateway"


class FaultInjector:
    """Injects ``schedule(seed, ...)`` into a running soak platform, one fault every ``every`` s."""

    def __init__(
        self,
        soak: SoakPlatform,
        out_dir: Path,
        seed: int,
        every: float,
        webhooks: Path | None = None,
        kinds: Sequence[str] = KINDS,
    ) -> None:
        self.soak = soak
        self.kinds = kinds
        self.seed = seed
        self.every = every
        self.webhooks = webhooks
        self.log_path = out_dir / "faults.jsonl"
        self.records: list[FaultRecord] = []
        # the webhook re-deliveries' own draws: the schedule stays the same whatever the load sent
        self._rng = random.Random(seed + 1)

    async def run(self, stop: asyncio.Event, duration: float) -> list[FaultRecord]:
        """Until ``stop`` is set: the schedule's faults, one starting every ``every`` seconds."""
        count = max(1, int(duration // self.every) + 1)
        started = time.monotonic()
        for index, fault in enumerate(schedule(self.seed, count, self.soak.processes, self.kinds), start=1):
            # one every `every` seconds from the start, whatever the previous one took
            wait = max(0.0, started + index * self.every - time.monotonic())
            try:
                await asyncio.wait_for(stop.wait(), wait)
                return self.records
            except TimeoutError:
                pass
            if stop.is_set():
                break
            await self.inject(fault)
        return self.records

    async def inject(self, fault: Fault) -> FaultRecord:
        started = time.time()
        handler = getattr(self, f"_{fault.kind}")
        try:
            down = await handler(fault.target)
        except Exception as error:  # a fault that could not be injected must not end the run
            log.warning("fault %s on %s failed: %s", fault.kind, fault.target, error)
            await self.soak.ensure_running()
            down = True
        record = FaultRecord(fault.kind, fault.target, started, time.time(), down)
        self.records.append(record)
        with self.log_path.open("a") as out:
            out.write(json.dumps(asdict(record)) + "\n")
        print(
            f"fault  {fault.kind:18s} {fault.target:14s} {record.ended - record.started:5.1f} s", flush=True
        )
        return record

    async def _kill(self, target: str) -> bool:
        self.soak.kill(target)
        await asyncio.sleep(1.0)
        await self.soak.restart(target)
        return True

    async def _pause(self, target: str) -> bool:
        self.soak.pause(target)
        try:
            await asyncio.sleep(PAUSE_SECONDS)
        finally:
            self.soak.resume(target)
        return True

    async def _restart_redis(self, target: str) -> bool:
        crash = self._rng.random() < 0.5
        await asyncio.to_thread(self.soak.redis.restart, DOWN_SECONDS, crash=crash)
        return True

    async def _terminate_backends(self, target: str) -> bool:
        def terminate() -> int:
            url = libpq_url(self.soak.admin_url)
            with psycopg.connect(url, autocommit=True) as connection:
                rows = connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE usename LIKE 'stylestudio\\_%' AND pid <> pg_backend_pid()"
                ).fetchall()
            return len(rows)

        await asyncio.to_thread(terminate)
        return True

    async def _restart_postgres(self, target: str) -> bool:
        await asyncio.to_thread(self.soak.postgres.restart, DOWN_SECONDS)
        return True

    def _set_provider_fault(self, value: str) -> None:
        key = provider_fault_key(self.soak.platform.redis_prefix)
        with redis.Redis.from_url(self.soak.redis.url) as client:
            client.set(key, value, px=int(PROVIDER_FAULT_SECONDS * 1000))

    async def _provider(self, value: str) -> bool:
        await asyncio.to_thread(self._set_provider_fault, value)
        await asyncio.sleep(PROVIDER_FAULT_SECONDS)
        return False

    async def _provider_fail(self, target: str) -> bool:
        return await self._provider("fail:0")

    async def _provider_stall(self, target: str) -> bool:
        return await self._provider(f"stall:{WORKER_LEASE_SECONDS * 1.5:g}")

    async def _provider_slow(self, target: str) -> bool:
        return await self._provider("slow:2")

    async def _stripe_webhooks(self, target: str) -> bool:
        """Payment events already delivered once, again: a random few, shuffled, each twice."""
        sent = _read_jsonl(self.webhooks) if self.webhooks is not None else []
        if not sent:
            return False
        chosen = self._rng.sample(sent, min(REDELIVERED_WEBHOOKS, len(sent)))
        self._rng.shuffle(chosen)
        deliveries = [entry["payload"] for entry in chosen for _ in range(2)]
        async with httpx.AsyncClient(base_url=self.soak.gateway_url, timeout=30.0) as http:
            for payload in deliveries:
                body = payload if isinstance(payload, str) else json.dumps(payload)
                try:
                    answer = await http.post(
                        "/webhooks/stripe", content=body, headers=webhook_headers(body, WEBHOOK_SECRET)
                    )
                except httpx.TransportError as error:
                    log.warning("stripe webhook not delivered: %s", error)
                    continue
                if answer.status_code != 200:
                    log.warning("stripe webhook answered %s: %s", answer.status_code, answer.text[:200])
                await asyncio.sleep(0.2)
        return False

    async def _replicate_webhooks(self, target: str) -> bool:
        """Finished predictions' webhooks again, late: for a random few, in shuffled order, the
        "completed" one twice (a redelivery under its own id, then under a new one, which the
        id's deduplication does not catch) and then the "start" one, older than the outcome."""
        replicate = self.soak.replicate
        sent = list(replicate.sent)
        finished = sorted({hook.prediction_id for hook in sent if hook.status in FINISHED})
        chosen = self._rng.sample(finished, min(REDELIVERED_WEBHOOKS, len(finished)))
        deliveries: list[tuple[SentWebhook, str | None]] = []
        for prediction_id in chosen:
            hooks = [hook for hook in sent if hook.prediction_id == prediction_id]
            completed = [hook for hook in hooks if hook.status in FINISHED][-1]
            started = [hook for hook in hooks if hook.status not in FINISHED]
            deliveries += [(completed, None), (completed, f"msg_replay_{uuid.uuid4().hex}")]
            deliveries += [(hook, None) for hook in started]
        for hook, webhook_id in deliveries:
            try:
                answer = await replicate.redeliver(hook, webhook_id)
            except httpx.TransportError as error:
                log.warning("replicate webhook not delivered: %s", error)
                continue
            if answer.status_code != 200:
                log.warning("replicate webhook answered %s: %s", answer.status_code, answer.text[:200])
            await asyncio.sleep(0.1)
        return False


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # a line still being written
    return entries
