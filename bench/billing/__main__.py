"""Benchmark: reserve+capture pairs through the gRPC API vs pgbench running the same SQL.

    .venv/bin/python -m bench.billing [--seconds 10] [--clients 64] [--until-stopped]

Starts a billing service process on a fresh database, then from ``--clients``
concurrent gRPC clients runs ReserveTokens(1) + CaptureHold pairs, once spread over
as many wallets as clients and once on one hot wallet; then has pgbench run the very
statements the service issues for a pair (store.py's reserve CTE, the hold read and the
capture CTE that also writes the outbox row, each its own transaction, as prepared
statements) with the same number of clients.
Prints pairs/s, p50/p99 latency and the ratio to pgbench, and how this machine does on the
issue's own pgbench yardstick (the goals scaled by it). Needs PostgreSQL, Redis
and pgbench (postgresql-client).
With ``--until-stopped`` it measures nothing: the pairs and pgbench run at once, round
after round, until it is sent SIGTERM or SIGINT (the load ``bench.overload`` runs beside).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench.cpu import ProcessCpu
from kit.clients import open_channel
from kit.infra import resolve_infrastructure
from services.billing import store
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.harness import Platform, TestDatabase

FUNDS = 10**9  # a pair spends 1; GrantTokens' proto allows up to this (the service is told to)
REPO_ROOT = Path(__file__).resolve().parents[2]


async def fund(stub: billing_pb2_grpc.BillingServiceStub, user_id: str) -> None:
    await stub.GrantTokens(
        billing_pb2.GrantTokensRequest(
            user_id=user_id, amount=FUNDS, reason="bench", idempotency_key=f"bench:{user_id}"
        )
    )


async def grpc_pairs(
    stub: billing_pb2_grpc.BillingServiceStub,
    wallets: list[str],
    clients: int,
    seconds: float,
    stopping: asyncio.Event | None = None,
) -> tuple[int, list[float]]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(index: int) -> None:
        user_id = wallets[index % len(wallets)]
        while time.perf_counter() < stop and not (stopping and stopping.is_set()):
            started = time.perf_counter()
            generation_id = uuid.uuid4().hex
            hold = await stub.ReserveTokens(
                billing_pb2.ReserveTokensRequest(
                    user_id=user_id,
                    amount=1,
                    generation_id=generation_id,
                    idempotency_key=f"g:{generation_id}",
                )
            )
            await stub.CaptureHold(
                billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key=f"c:{hold.id}")
            )
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(i) for i in range(clients)))
    return len(latencies), latencies


def _fill(sql: str, values: dict[str, str]) -> str:
    """The service's statement with its bind parameters replaced by pgbench expressions."""
    sql = re.sub(r"(?<![:\\\w]):(\w+)", lambda m: values[m.group(1)], sql)
    # A literal colon stays one, split from the word after it: pgbench would take ':word' for a variable.
    return sql.replace("\\:", ":' || '")


def pgbench_script(hot: bool, wallets: int) -> str:
    user = "'bench-hot'" if hot else "'bench-' || CAST(:n AS text)"
    reserve = _fill(
        store._RESERVE.text,
        {
            "amount": "1",
            "user_id": user,
            "key": "'g:' || CAST(:r AS text)",
            "hold_id": "CAST(md5('h' || CAST(:r AS text)) AS uuid)",
            "transfer_id": "gen_random_uuid()",
            "spend": "'00000000-0000-0000-0000-000000000003'::uuid",
            "generation_id": "'gen-' || CAST(:r AS text)",
            "reason": "'Generation bench'",
            "ttl_seconds": "3600",
        },
    ).strip()
    hold_id = "CAST(md5('h' || CAST(:r AS text)) AS uuid)"
    payload = "'\\x" + "ab" * 200 + "'::bytea"  # an Event envelope is about 200 bytes
    capture = _fill(
        store._CAPTURE.text,
        {
            "hold_id": hold_id,
            "amount": "NULL",
            "key": "'c-' || CAST(:r AS text)",
            "capture_id": "gen_random_uuid()",
            "release_id": "gen_random_uuid()",
            "spend": "'00000000-0000-0000-0000-000000000003'::uuid",
            "event_id": "gen_random_uuid()",
            "event_stream": "'events.billing'",
            "event_type": "'billing.hold_captured'",
            "event_payload": payload,
        },
    ).strip()
    flat = lambda sql: " ".join(line.strip() for line in sql.splitlines())  # noqa: E731
    # Every statement in autocommit, as the service runs them: reserve; read the hold (its
    # event needs it); capture with its outbox row.
    return "\n".join(
        [
            f"\\set n random(0, {wallets - 1})",
            "\\set r random(1, 9000000000000000000)",
            flat(reserve) + ";",
            f"SELECT * FROM holds WHERE id = {hold_id};",
            flat(capture) + ";",
            "",
        ]
    )


# The issue's yardstick: "stock PostgreSQL 15 on this kind of machine did about 13,500
# transactions/s of a one-row UPDATE plus one INSERT over 64 rows, and about 2,400/s on a
# single hot row". Run here too, it tells how this machine compares with that one.
REFERENCE_TPS = {"spread over wallets": 13_500.0, "one hot wallet": 2_400.0}
GOAL_PAIRS = {"spread over wallets": 2_000.0, "one hot wallet": 500.0}
REFERENCE_TABLES = """
CREATE TABLE reference_accounts (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0);
INSERT INTO reference_accounts SELECT g, 0 FROM generate_series(1, 64) g;
CREATE TABLE reference_transfers (id bigserial PRIMARY KEY, account int NOT NULL, amount int NOT NULL,
                                  at timestamptz NOT NULL DEFAULT now());
"""


def reference_script(hot: bool) -> str:
    account = "1" if hot else ":a"
    return "\n".join(
        [
            "\\set a random(1, 64)",
            "BEGIN;",
            f"UPDATE reference_accounts SET balance = balance + 1 WHERE id = {account};",
            f"INSERT INTO reference_transfers (account, amount) VALUES ({account}, 1);",
            "COMMIT;",
            "",
        ]
    )


def create_reference_tables(url: str) -> None:
    dsn = make_url(url).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as connection:
        connection.execute(REFERENCE_TABLES)


def pgbench_command(url: str, script: str, clients: int, seconds: float) -> tuple[list[str], dict[str, str]]:
    """pgbench running the file ``script`` against ``url``'s database, and its environment."""
    dsn = make_url(url).set(drivername="postgresql")
    env = os.environ | {"PGPASSWORD": dsn.password or ""}
    command = [
        "pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(int(seconds)),
        "-h", dsn.host or "127.0.0.1", "-p", str(dsn.port or 5432), "-U", dsn.username or "",
        "-f", script, dsn.database or "",
    ]  # fmt: skip
    return command, env


def run_pgbench(url: str, script_text: str, clients: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(script_text)
    command, env = pgbench_command(url, script.name, clients, seconds)
    for _ in range(40):  # other test runs share the server's connection slots: wait for room
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if "remaining connection slots" not in result.stderr:
            break
        time.sleep(2)
    Path(script.name).unlink()
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


async def contend(
    stub: billing_pb2_grpc.BillingServiceStub,
    wallets: list[str],
    url: str,
    pgbench_clients: int,
    seconds: float,
    stopping: asyncio.Event,
    rate: int | None = None,
) -> None:
    """The pairs through the service and pgbench's same SQL at once, in rounds of ``seconds``,
    until ``stopping``: a load on the database server for another benchmark to run beside
    (``bench.overload``). A line per round; a pgbench that found no connection slots is
    started again at the next round."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(pgbench_script(False, len(wallets)))
    command, env = pgbench_command(url, script.name, pgbench_clients, seconds)
    if rate:  # pgbench's -R: its connections held, its transactions paced
        command[1:1] = ["-R", str(rate)]
    print(f"contending: {len(wallets)} gRPC clients and {pgbench_clients} pgbench clients", flush=True)
    try:
        while not stopping.is_set():
            pgbench = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            pairs, _ = await grpc_pairs(stub, wallets, len(wallets), seconds, stopping)
            if stopping.is_set() and pgbench.returncode is None:
                pgbench.terminate()
            out, err = await pgbench.communicate()
            tps = re.search(r"tps = ([\d.]+)", out.decode())
            if tps:
                pgbench_text = f"{float(tps.group(1)):.0f} tps"
            else:
                pgbench_text = "stopped" if stopping.is_set() else f"failed: {err.decode().strip()[-160:]}"
            print(
                f"round: {pairs / seconds:.0f} pairs/s through the service; pgbench {pgbench_text}; "
                f"load 1 min {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    finally:
        os.unlink(script.name)


def profiler(platform: Platform, path: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) sampling the billing process; collapsed stacks for flame graphs."""
    pid = str(platform.processes["billing"].pid)
    command = [
        str(Path(sys.executable).with_name("py-spy")),
        "record",
        "--pid",
        pid,
        "--duration",
        str(int(seconds)),
        "--nonblocking",
    ]
    return subprocess.Popen([*command, "--format", "raw", "--output", path], stdout=subprocess.DEVNULL)


def report(
    name: str,
    pairs: int,
    latencies: list[float],
    seconds: float,
    pgbench_tps: float,
    loads: tuple[float, float],
) -> None:
    rate = pairs / seconds
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else 0.0
    print(
        f"{name:<22} {rate:8.0f} pairs/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
        f"pgbench same SQL {pgbench_tps:8.0f} pairs/s   ratio {rate / pgbench_tps:4.2f}   "
        f"load 1 min {loads[0]:.1f} / {loads[1]:.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.billing")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--pgbench-clients", type=int, help="pgbench connections (default: --clients)")
    parser.add_argument(
        "--pool-size", type=int, help="the service's STYLESTUDIO_DB_POOL_SIZE (default: the kit's)"
    )
    parser.add_argument(
        "--until-stopped",
        action="store_true",
        help="no measurement: pairs and pgbench at once, in rounds of --seconds, until SIGTERM or SIGINT "
        "(a load for bench.overload)",
    )
    parser.add_argument(
        "--pgbench-rate", type=int, help="with --until-stopped: pgbench's transactions/s in all (its -R)"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy the billing process during the spread run (collapsed stacks)",
    )
    args = parser.parse_args()
    infrastructure = resolve_infrastructure(REPO_ROOT / "data")
    database = TestDatabase(infrastructure.database_url)
    database.create(services=["billing"])
    work = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    # The kit's production health interval: the harness's 0.3 s checks the migration head
    # three times a second, which would be billed to the pairs.
    # Spans are still made and ended (tracing on), but not written out one by one to the
    # harness's JSON-lines file, a test aid that production replaces with batched OTLP export.
    env = {
        "STYLESTUDIO_LOG_LEVEL": "WARNING",
        "STYLESTUDIO_HEALTH_CHECK_INTERVAL_SECONDS": "2",
        "STYLESTUDIO_TRACE_FILE": "",
        "STYLESTUDIO_SPAN_STORE_DIR": "",
        "STYLESTUDIO_MAX_GRANT_TOKENS": str(FUNDS),
    }
    if args.pool_size:
        env |= {"STYLESTUDIO_DB_POOL_SIZE": str(args.pool_size), "STYLESTUDIO_DB_MAX_OVERFLOW": "0"}
    platform = Platform(database, infrastructure.redis_url, work, extra_env=env)
    try:
        platform.start("billing")
        await platform.wait_serving("billing")
        # The pairs are the generation service's calls; the funding is an operator's.
        channel = open_channel(platform.addresses["billing"], platform.credentials("generation"), 30.0)
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        spread = [f"bench-{i}" for i in range(args.clients)]
        async with open_channel(platform.addresses["billing"], platform.credentials("operator")) as funding:
            for user_id in [*spread, "bench-hot"]:
                await fund(billing_pb2_grpc.BillingServiceStub(funding), user_id)
        if args.until_stopped:
            stopping = asyncio.Event()
            for signal_number in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signal_number, stopping.set)
            url = database.service_urls["billing"]
            pgbench_clients = args.pgbench_clients or args.clients
            await contend(stub, spread, url, pgbench_clients, args.seconds, stopping, args.pgbench_rate)
            await channel.close()
            return
        results = {}
        for name, wallets in (("spread over wallets", spread), ("one hot wallet", ["bench-hot"])):
            await grpc_pairs(stub, wallets, args.clients, 1.0)  # warm-up: connections, prepared statements
            spy = (
                profiler(platform, args.profile, args.seconds) if args.profile and wallets is spread else None
            )
            cpu = ProcessCpu({"billing": platform.processes["billing"].pid, "bench client": os.getpid()})
            cpu.start()
            pairs, latencies = await grpc_pairs(stub, wallets, args.clients, args.seconds)
            cpu.stop()
            if spy is not None:
                spy.wait()
            results[name] = (pairs, latencies, os.getloadavg()[0], cpu.report(pairs, "pair"))
        await channel.close()
        platform.stop("billing")
        url = database.service_urls["billing"]
        pgbench_clients = args.pgbench_clients or args.clients
        create_reference_tables(url)
        for name, hot in (("spread over wallets", False), ("one hot wallet", True)):
            tps = run_pgbench(url, pgbench_script(hot, args.clients), pgbench_clients, args.seconds)
            pairs, latencies, load, cpu_line = results[name]
            report(name, pairs, latencies, args.seconds, tps, (load, os.getloadavg()[0]))
            print(f"{'':22} {cpu_line}")
            reference = run_pgbench(url, reference_script(hot), pgbench_clients, args.seconds)
            speed = reference / REFERENCE_TPS[name]
            print(
                f"{'':22} machine: the issue's reference workload {reference:.0f} tps "
                f"(issue: about {REFERENCE_TPS[name]:,.0f}) -> {speed:.2f}x its machine; "
                f"goal {GOAL_PAIRS[name]:,.0f} pairs/s scaled to this one: {GOAL_PAIRS[name] * speed:.0f}"
            )
        load_text = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"({args.clients} clients, {args.seconds:.0f} s each, {os.cpu_count()} CPUs, "
            f"load average {load_text}; logs in {work})"
        )
    finally:
        await platform.close()  # the processes, then the run's Redis keys
        database.drop()
        infrastructure.close()


if __name__ == "__main__":
    asyncio.run(main())
