"""The generation benchmark quiet, then beside a database-heavy load: ``python -m bench.overload``.

Issue 13's overload goal: run while ``bench.billing`` works the same PostgreSQL server, the
generation benchmark completes every generation, none is picked up twice, nothing is
answered with a 5xx, and its throughput is at least 40% of the quiet run's.

One platform (bench/generation's, on a fresh database) and one set of users serve both runs:
1. quiet: ``bench.generation``'s measurement (``--clients`` x ``--per-client`` drafts), the yardstick;
2. contended: ``python -m bench.billing --until-stopped`` is started as a subprocess (its own
   billing service on its own database, ``--billing-clients`` gRPC clients doing
   reserve+capture pairs, and pgbench running the same SQL from ``--pgbench-clients``
   connections, all on the same server), and once it is working the same measurement runs
   again; the load is stopped after it. By default pgbench takes every connection slot the
   server has free at that moment but a few: the platform must live with a full server.

For each run it prints generations/s, completed / failed / not terminal, the HTTP answers
(every 5xx by route, status and reason; a 429 or 503 with Retry-After that the client waited
for and retried counts as "shed", not as an answer), watch streams that broke, the
generations picked up more than once, and CPU per generation; then the ratio and a verdict
line. Exit status 1 when the goal is not met.

"Picked up" is the worker's guarded move to PROCESSING (store.take_for_processing), the one
step that gives a worker the generation: it adds one to the row's ``attempt`` column, so a
terminal generation whose ``attempt`` is above 1 was run by a worker twice (after a lease
ran out, a sweeper re-queue or a redelivered job). Job deliveries that found the generation
already taken do not count (they do nothing). The span file's ``generation.process`` spans
(one per pick-up) and ``generation.sweep requeue`` spans are counted beside it as a check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench.cpu import cpu_seconds
from bench.generation.run import (
    TERMINAL,
    Answers,
    Client,
    Measured,
    bench_http,
    bench_platform,
    load,
    measure,
    percentile,
    sign_up_all,
)
from tests.harness import Platform, TestDatabase

GOAL_RATIO = 0.4
# Connection slots pgbench leaves free when it is sized from the server: the load's own
# billing service (its pool and the kit's connection) and a little room.
SLOTS_LEFT = 10


@dataclass
class Pickups:
    """Per generation id: pick-ups by the row's attempt counter, and the span file's counts."""

    attempts: dict[str, int]
    process_spans: Counter[str]
    requeues: Counter[str]

    def twice(self, ids: set[str]) -> dict[str, int]:
        return {i: n for i, n in self.attempts.items() if i in ids and n > 1}


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection, waiting for a free slot (the server is shared)."""
    for _ in range(30):
        try:
            return psycopg.connect(_libpq(url), autocommit=True)
        except psycopg.OperationalError as error:
            if "connection slots" not in str(error):
                raise
            time.sleep(1.0)
    return psycopg.connect(_libpq(url), autocommit=True)


def free_slots(database: TestDatabase) -> tuple[int, int]:
    """(slots a non-superuser may still open on the server, max_connections)."""
    with connect(database.admin_url) as connection:
        row = connection.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int,"
            " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    assert row is not None
    maximum, reserved, used = (int(str(value)) for value in row)
    return maximum - reserved - used, maximum


def pickups(database: TestDatabase, trace_file: Path, ids: set[str]) -> Pickups:
    with connect(database.service_urls["generation"]) as connection:
        rows = connection.execute(
            "SELECT id::text, attempt FROM generations WHERE id = ANY(%s::uuid[])", (sorted(ids),)
        ).fetchall()
    process_spans: Counter[str] = Counter()
    requeues: Counter[str] = Counter()
    for line in trace_file.read_text().splitlines():
        span = json.loads(line) if line else {}
        generation_id = span.get("attributes", {}).get("stylestudio.generation.id")
        if generation_id in ids and span["name"] == "generation.process":
            process_spans[generation_id] += 1
        elif generation_id in ids and span["name"] == "generation.sweep requeue":
            requeues[generation_id] += 1
    return Pickups({str(i): int(str(n)) for i, n in rows}, process_spans, requeues)


def describe(name: str, measured: Measured, picked: Pickups) -> list[str]:
    """The run's figures, one per line; the failures the goal counts are returned as text."""
    statuses = Counter(status for _, status, _ in measured.results)
    not_terminal = sum(n for status, n in statuses.items() if status not in TERMINAL)
    ids = measured.generation_ids
    twice = picked.twice(ids)
    completed = measured.completed
    print(f"\n== {name}: {len(measured.results)} generations in {measured.elapsed:.1f} s")
    print(f"   {measured.loads[0]} before, {measured.loads[1]} after")
    print(f"   throughput      {measured.rate:6.2f} completed generations/s")
    print(
        f"   completed {statuses['COMPLETED']}, failed {statuses['FAILED']}, "
        f"canceled {statuses['CANCELED']}, not terminal {not_terminal}"
    )
    for status in sorted(set(statuses) - TERMINAL)[:5]:
        print(f"     not terminal: {statuses[status]} x {status[:240]}")
    if completed:
        print(
            f"   POST -> COMPLETED p50 {percentile(completed, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(completed, 0.99) * 1000:.0f} ms, max {max(completed) * 1000:.0f} ms"
        )
    answers: Answers = measured.answers
    print("   answers (route, status, reason: count):")
    for (route, code, reason), count in sorted(answers.final.items()):
        print(f"     {route} {code} {reason}: {count}")
    shed = sum(answers.shed.values())
    print(f"   shed (429/503 with Retry-After, waited for and retried): {shed}")
    for (route, code, reason), count in sorted(answers.shed.items()):
        print(f"     {route} {code} {reason}: {count}")
    for what, count in sorted(answers.no_answer.items()):
        print(f"   no answer: {what}: {count}")
    for what, count in sorted(answers.stream_errors.items()):
        print(f"   watch stream error: {what}: {count}")
    print(
        f"   picked up more than once: {len(twice)} (attempt counter); "
        f"by worker spans {sum(1 for i in ids if picked.process_spans[i] > 1)}; "
        f"sweeper re-queues {sum(picked.requeues[i] for i in ids)}"
    )
    for generation_id, attempts in sorted(twice.items())[:10]:
        print(f"     {generation_id}: {attempts} pick-ups")
    print(f"   {measured.cpu.report(len(measured.results), 'generation')}")
    failures = []
    if statuses["COMPLETED"] != len(measured.results):
        failures.append(f"{len(measured.results) - statuses['COMPLETED']} not completed")
    if twice:
        failures.append(f"{len(twice)} picked up twice")
    if server_errors := sum(answers.server_errors().values()):
        failures.append(f"{server_errors} 5xx")
    if stream_errors := sum(answers.stream_errors.values()):
        failures.append(f"{stream_errors} watch streams broken")
    if no_answer := sum(answers.no_answer.values()):
        failures.append(f"{no_answer} calls without an answer")
    return failures


async def start_load(args: argparse.Namespace, pgbench_clients: int, log: Path) -> asyncio.subprocess.Process:
    command = [
        sys.executable, "-m", "bench.billing", "--until-stopped",
        "--seconds", str(args.billing_round_seconds), "--clients", str(args.billing_clients),
        "--pgbench-clients", str(pgbench_clients),
    ]  # fmt: skip
    if args.pgbench_rate:
        command += ["--pgbench-rate", str(args.pgbench_rate)]
    print(f"\nload: {' '.join(command[1:])} (its log: {log})", flush=True)
    return await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=log.open("wb"), cwd=Path(__file__).parents[1]
    )


async def read_lines(process: asyncio.subprocess.Process, lines: list[str], started: asyncio.Event) -> None:
    assert process.stdout is not None
    async for raw in process.stdout:
        line = raw.decode().rstrip()
        lines.append(line)
        print(f"   [load] {line}", flush=True)
        if line.startswith("contending:"):
            started.set()


async def contended_run(
    args: argparse.Namespace, platform: Platform, database: TestDatabase, users: list[Client]
) -> tuple[Measured, float]:
    free, maximum = free_slots(database)
    pgbench_clients = args.pgbench_clients or max(8, min(64, free - SLOTS_LEFT))
    print(f"\nserver: max_connections {maximum}, {free} slots free before the load", flush=True)
    load_process = await start_load(args, pgbench_clients, platform.work_dir / "bench-billing.log")
    lines: list[str] = []
    started = asyncio.Event()
    reader = asyncio.create_task(read_lines(load_process, lines, started))
    try:
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait([waiting, reader], timeout=180, return_when=asyncio.FIRST_COMPLETED)
        if not started.is_set():
            waiting.cancel()
            raise RuntimeError(
                f"bench.billing did not start its load: see {platform.work_dir / 'bench-billing.log'}"
            )
        await asyncio.sleep(1.0)  # pgbench's connections are open
        cpu_before = cpu_seconds(load_process.pid)
        measured = await measure(platform, users, args.per_client)
        load_cpu = cpu_seconds(load_process.pid) - cpu_before
    finally:
        if load_process.returncode is None:
            load_process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(load_process.wait(), timeout=120)
        except TimeoutError:
            load_process.kill()
        await reader
    return measured, load_cpu


async def run(args: argparse.Namespace) -> bool:
    async with (
        bench_platform(args.workers, True, "bench-overload-") as (platform, database),
        bench_http(platform, args.clients) as http,
    ):
        tokens = 2 * 10 * args.per_client + 10
        users = await sign_up_all(platform, http, args.clients, tokens, Answers())
        platform.trace_file.write_text("")  # only the measured generations' spans
        print(f"quiet run: {args.clients} clients x {args.per_client} draft generations", flush=True)
        quiet = await measure(platform, users, args.per_client)
        print(f"   done: {quiet.rate:.2f} completed generations/s", flush=True)
        contended, load_cpu = await contended_run(args, platform, database, users)
        await asyncio.sleep(1.0)  # the last spans reach the file
        picked = pickups(database, platform.trace_file, quiet.generation_ids | contended.generation_ids)
        quiet_failures = describe("quiet", quiet, picked)
        contended_failures = describe("beside bench.billing", contended, picked)
        print(f"   the load used {load_cpu:.1f} CPU s during the run")
        print(f"\nplatform logs in {platform.work_dir}")
    ratio = contended.rate / quiet.rate if quiet.rate else 0.0
    failures = [f"quiet: {f}" for f in quiet_failures] + contended_failures
    if ratio < GOAL_RATIO:
        failures.append(f"throughput {ratio:.0%} of quiet < {GOAL_RATIO:.0%}")
    print(
        f"\nratio contended/quiet: {ratio:.2f} ({contended.rate:.2f} / {quiet.rate:.2f} generations/s); "
        f"{os.cpu_count()} CPUs, {load()}"
    )
    verdict = "MET" if not failures else "NOT MET: " + "; ".join(failures)
    print(
        f"overload goal (>= {GOAL_RATIO:.0%} of quiet, all completed, none picked up twice, no 5xx): "
        f"{verdict}"
    )
    return not failures


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--per-client", type=int, default=10, help="generations each client runs in turn, per run"
    )
    parser.add_argument("--workers", type=int, default=32, help="STYLESTUDIO_GENERATION_WORKERS")
    parser.add_argument("--billing-clients", type=int, default=32, help="bench.billing's gRPC clients")
    parser.add_argument(
        "--pgbench-clients",
        type=int,
        help=f"bench.billing's pgbench clients (default: free slots - {SLOTS_LEFT})",
    )
    parser.add_argument(
        "--pgbench-rate",
        type=int,
        help="pace pgbench to this many transactions/s (its -R): its connections still take the slots, "
        "without taking the CPU too",
    )
    parser.add_argument("--billing-round-seconds", type=int, default=15, help="bench.billing's rounds")
    args = parser.parse_args()
    sys.exit(0 if asyncio.run(run(args)) else 1)


if __name__ == "__main__":
    main()
