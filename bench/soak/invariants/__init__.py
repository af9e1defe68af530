"""The invariants of issue 13, section 4, checked after every soak run.

    violations = await check(Target(database_url=..., redis_url=..., redis_prefix=..., data_dir=...))

Each check reads what the services wrote, in one read-only REPEATABLE READ snapshot of the one
database that holds every service's schema (so billing, generation, files and analytics are
compared at the same instant), plus the files service's local store and Redis:

1. every wallet reconciles with its transfers (billing's own reconciliation); none below zero;
2. every generation is terminal once the sweeper's deadline has passed;
3. every COMPLETED generation was charged exactly once (its cost), FAILED or CANCELED not at all;
4. every purchase whose payment succeeded was credited exactly once;
5. every event produced reached analytics exactly once (ledger of facts vs usage records);
6. no stored file without a row, no row without its bytes, no result of a failed or canceled
   generation;
7. from the load's failed requests and the faults' windows: no 5xx but a 503 while a dependency
   was down, no request without an answer (but while the gateway itself was down).

The database is read with the admin URL, as a checker outside the services (the services' rule
of one schema each is theirs, not an auditor's); nothing is written. ``python -m
bench.soak.invariants`` runs it from the command line (docs/operations.md, "Invariants").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import create_async_engine

from bench.soak.invariants import analytics, answers, generations, ledger, storage
from bench.soak.invariants.violations import KINDS, PLATFORM_NOT_READY, Violation
from services.generation.settings import GenerationSettings

__all__ = ["KINDS", "Target", "Violation", "check", "default_sweeper_deadline"]


def default_sweeper_deadline() -> timedelta:
    """The generation deadline plus two sweeper passes, from the generation service's settings
    (the same ``STYLESTUDIO_*`` environment): by then the sweeper has ended what nobody finished."""
    settings = GenerationSettings()
    return timedelta(seconds=settings.generation_deadline_seconds + 2 * settings.sweeper_interval_seconds)


@dataclass(frozen=True)
class Target:
    """The platform a run worked, and what the run recorded."""

    # The admin URL of the database holding every service's schema (kit/bootstrap.py).
    database_url: str
    redis_url: str
    redis_prefix: str
    # The files service's data dir: the local store keeps the bytes under <data_dir>/files.
    data_dir: Path
    # Given: the platform must answer /readyz with every service SERVING after the run.
    gateway_url: str | None = None
    sweeper_deadline: timedelta = field(default_factory=default_sweeper_deadline)
    # The load's failed requests and the fault injector's windows (bench/soak/invariants/answers.py).
    requests: Path | None = None
    faults: Path | None = None
    # A 503 up to this long after a dependency came back is still its fault.
    fault_grace_seconds: float = 5.0
    # Reasons of 503s that admission control gives anywhere (refusing work early under load).
    overload_reasons: Collection[str] = ()


async def check(target: Target, *, settle_seconds: float = 0.0) -> list[Violation]:
    """Every violation of the invariants; ``settle_seconds``: while some are found, look again
    (every second, up to that long) for work still in flight when the run ended to settle
    (events being relayed and ingested, a sweeper's pass, a janitor's)."""
    faults = answers.read_faults(target.faults)
    requests = answers.answered(
        target.requests,
        faults,
        grace_seconds=target.fault_grace_seconds,
        overload_reasons=target.overload_reasons,
    )
    deadline = time.monotonic() + settle_seconds
    while True:
        found = await _platform(target)
        if not found or time.monotonic() >= deadline:
            return found + requests
        await asyncio.sleep(1.0)


async def _platform(target: Target) -> list[Violation]:
    engine = create_async_engine(target.database_url, pool_size=1, max_overflow=0, hide_parameters=True)
    redis = Redis.from_url(target.redis_url)
    try:
        async with engine.connect() as connection, connection.begin():
            # One snapshot for every schema: a saga's billing and generation rows at one instant.
            await connection.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            found = await ledger.wallets(connection)
            facts = await generations.facts(connection)
            found += await generations.terminal_after_deadline(connection, target.sweeper_deadline)
            found += await ledger.charges(connection, facts)
            found += await ledger.purchases_credited(connection)
            found += await analytics.delivered_once(connection, facts, redis, target.redis_prefix)
            found += await storage.stored_files(connection, target.data_dir / "files", facts)
    finally:
        await redis.aclose()
        await engine.dispose()
    if target.gateway_url:
        found += await _ready(target.gateway_url)
    return found


async def _ready(gateway_url: str) -> list[Violation]:
    try:
        async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as client:
            response = await client.get("/readyz")
    except httpx.HTTPError as error:
        return [Violation(PLATFORM_NOT_READY, gateway_url, f"/readyz did not answer: {error!r}")]
    if response.status_code != 200:
        return [
            Violation(PLATFORM_NOT_READY, gateway_url, f"/readyz {response.status_code}: {response.text}")
        ]
    return []
