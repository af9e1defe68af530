"""A soak run: load, faults and invariants in one command (``make soak``).

    python -m bench.soak --duration 2m --seed 13 --fault-every 20s

Starts the soak platform (bench/soak/platform.py: its own embedded PostgreSQL and Redis, two
generation and two files processes) in a scratch folder, drives the load against its gateway
for the duration while the fault injector (bench/soak/faults.py) injects one fault every
``--fault-every`` on the seed's schedule, then lets the platform settle (every generation
terminal, every event relayed; at most the sweeper's deadline) and checks the invariants
(bench/soak/invariants). Prints a summary whose last line is ``violations: N``; exits 1 when
N > 0. The run's folder keeps report.json, requests.jsonl, webhooks.jsonl, faults.jsonl and
every process's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.soak.faults import KINDS, FaultInjector, FaultRecord, schedule
from bench.soak.invariants import Target, check
from bench.soak.platform import (
    GENERATION_DEADLINE_SECONDS,
    LOAD_MODELS,
    SWEEPER_INTERVAL_SECONDS,
    WEBHOOK_SECRET,
    SoakPlatform,
    process_names,
)
from kit.infra import libpq_url
from kit.settings import SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
# After the load: how long the platform may take to settle (the sweeper ends what nobody
# finished by the generation's deadline; a few passes more for its events to be relayed).
SETTLE_SECONDS = GENERATION_DEADLINE_SECONDS + 4 * SWEEPER_INTERVAL_SECONDS + 10.0
# Then, while the checker still finds something, it looks again this long (events in flight).
CHECK_SETTLE_SECONDS = 20.0


def seconds(text: str) -> float:
    """``90``, ``90s``, ``2m``, ``1h`` or ``1m30s`` as seconds."""
    parts = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text
    )
    if not text.strip() or parts is None or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 2m, 1h)")
    hours, minutes, secs = (float(group or 0) for group in parts.groups())
    return hours * 3600 + minutes * 60 + secs


async def locust_load(
    soak: SoakPlatform, users: int, duration: float, out_dir: Path, seed: int
) -> dict[str, Any]:
    """The Locust suite (bench/load), headless, as a child process: its report.json."""
    from bench.load.__main__ import ADMIN_TOKEN_ENV

    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--host",
        soak.gateway_url,
        "--users",
        str(users),
        "--spawn-rate",
        str(max(1, users // 2)),
        "--duration",
        f"{int(duration)}s",
        "--out",
        str(out_dir),
        "--models",
        ",".join(LOAD_MODELS),
    ]
    # Secrets through the environment, not a command line: the webhook secret, an admin's token
    # (some users upgraded to pro for batches, the system analytics read).
    _, admin_token = soak.platform.user_token(role="admin")
    env = {**os.environ, "STYLESTUDIO_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, ADMIN_TOKEN_ENV: admin_token}
    with (out_dir / "load.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO_ROOT, env=env, stdout=log, stderr=log
        )
        await process.wait()
    report = out_dir / "report.json"
    return dict(json.loads(report.read_text())) if report.exists() else {}


def _in_flight(admin_url: str) -> tuple[int, int]:
    """Generations not yet terminal, and events not yet relayed (every service's outbox)."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=5) as connection:
        open_generations = connection.execute(
            "SELECT count(*) FROM generation.generations "
            "WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELED')"
        ).fetchone()
        unrelayed = 0
        for service in SERVICES:
            row = connection.execute(f"SELECT count(*) FROM {service}.outbox").fetchone()
            unrelayed += row[0] if row else 0
    return (open_generations[0] if open_generations else 0), unrelayed


async def settle(soak: SoakPlatform, limit: float) -> float:
    """Until nothing is in flight (or ``limit`` s): the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if await asyncio.to_thread(_in_flight, soak.admin_url) == (0, 0):
                break
        except psycopg.Error:
            pass  # PostgreSQL coming back from a fault
        await asyncio.sleep(1.0)
    await asyncio.sleep(2 * SWEEPER_INTERVAL_SECONDS)  # consumers ingest what was just relayed
    return time.monotonic() - started


async def check_invariants(soak: SoakPlatform, out_dir: Path) -> list[str]:

    target = Target(
        database_url=soak.admin_url,
        redis_url=soak.redis.url,
        redis_prefix=soak.platform.redis_prefix,
        data_dir=soak.folder / "data",
        gateway_url=soak.gateway_url,
        sweeper_deadline=timedelta(seconds=GENERATION_DEADLINE_SECONDS + 2 * SWEEPER_INTERVAL_SECONDS),
        requests=out_dir / "requests.jsonl",
        faults=out_dir / "faults.jsonl",
    )
    return [str(violation) for violation in await check(target, settle_seconds=CHECK_SETTLE_SECONDS)]


def summary(report: dict[str, Any], faults: Sequence[FaultRecord], violations: Sequence[str]) -> list[str]:
    lines = []
    journeys = report.get("journeys", {}).get("completed", {})
    described = ", ".join(f"{kind} {count}" for kind, count in sorted(journeys.items()))
    lines.append(f"journeys completed: {sum(journeys.values())} ({described})")
    lines.append(f"requests/s: {report.get('rps', 0)} ({report.get('requests', 0)} requests)")
    lines.append("p99 per route:")
    for route in report.get("routes", []):
        lines.append(
            f"  {route['method']:6s} {route['route']:40s} p99 {route['p99_ms']:8.1f} ms  ({route['count']})"
        )
    by_kind = Counter(record.kind for record in faults)
    lines.append(f"faults injected: {len(faults)}")
    for kind, count in sorted(by_kind.items()):
        lines.append(f"  {kind}: {count}")
    for violation in violations:
        lines.append(f"VIOLATION {violation}")
    lines.append(f"violations: {len(violations)}")
    return lines


async def soak_run(args: argparse.Namespace, out_dir: Path) -> int:
    print(
        f"soak: seed {args.seed}, load {args.duration:g} s with {args.users} users, "
        f"a fault every {args.fault_every:g} s; run folder {out_dir}",
        flush=True,
    )
    started = time.monotonic()
    soak = await SoakPlatform.start(out_dir / "platform")
    print(f"platform up in {time.monotonic() - started:.1f} s: {', '.join(soak.processes)}", flush=True)
    try:
        webhooks = out_dir / "webhooks.jsonl"
        injector = FaultInjector(soak, out_dir, args.seed, args.fault_every, webhooks, args.faults)
        stop = asyncio.Event()
        faults = asyncio.create_task(injector.run(stop, args.duration))
        try:
            report = await locust_load(soak, args.users, args.duration, out_dir, args.seed)
        finally:
            stop.set()
            records = await faults  # the fault under way ends (a process restarted, a pause over)
        restarted = await soak.ensure_running()
        if restarted:
            print(f"restarted after the faults: {', '.join(restarted)}", flush=True)
        took = await settle(soak, SETTLE_SECONDS)
        print(f"settled in {took:.1f} s", flush=True)
        violations = await check_invariants(soak, out_dir)
    finally:
        await soak.close()
    for line in summary(report, records, violations):
        print(line, flush=True)
    return 1 if violations else 0


def _kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; known: {', '.join(KINDS)}")
    return kinds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=seconds, default=seconds("2m"), help="how long the load runs")
    parser.add_argument("--seed", type=int, default=None, help="the fault schedule's seed (default: random)")
    parser.add_argument("--fault-every", type=seconds, default=seconds("20s"), help="one fault this often")
    parser.add_argument("--users", type=int, default=8, help="simulated users of the load")
    parser.add_argument(
        "--out", type=Path, default=None, help="the run's folder (default: a fresh one, kept)"
    )
    parser.add_argument(
        "--faults",
        type=_kinds,
        default=KINDS,
        help=f"the kinds of fault to draw from, comma-separated (default all: {','.join(KINDS)})",
    )
    parser.add_argument("--schedule", action="store_true", help="print the seed's fault schedule and stop")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(2), "big")
    if args.schedule:
        for fault in schedule(
            args.seed, int(args.duration // args.fault_every) + 1, process_names(), args.faults
        ):
            print(f"{fault.kind} {fault.target}")
        return
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="soak-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    code = asyncio.run(soak_run(args, out_dir))
    if code == 0 and args.out is None:
        with contextlib.suppress(OSError):
            shutil.rmtree(out_dir)
    sys.exit(code)


if __name__ == "__main__":
    main()
