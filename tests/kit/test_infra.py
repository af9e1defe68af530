"""kit.infra finds or starts PostgreSQL and Redis; kit.launcher runs the children and stops them in order."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import psycopg
import redis

from kit.infra import (
    DATABASE_NAME_ENV,
    DATABASE_URL_ENV,
    REDIS_URL_ENV,
    Infrastructure,
    Origin,
    ensure_database,
    libpq_url,
    local_postgres_url,
    local_redis_url,
    resolve_infrastructure,
    with_database,
    without_password,
)
from kit.launcher import (
    FILE_URL_BASE_ENV,
    SERVICE_DATABASE_URL_ENV,
    Child,
    Console,
    LaunchSettings,
    ShutdownRequest,
    gateway_ready,
    platform_children,
    supervise,
    wants_colour,
)
from kit.settings import SERVICES

# ---------------------------------------------------------------- helpers


def unused_port() -> int:
    """A port nothing listens on, to make a probe of localhost find nothing."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once the process has exited (a zombie waiting for init to reap it counts as exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def nothing_local(data_dir: Path) -> Infrastructure:
    """Resolve with both localhost probes pointed at a port where nothing answers: embedded servers."""
    port = unused_port()
    return resolve_infrastructure(data_dir, postgres_port=port, redis_port=port, env={})


# Runs in a separate process, as a service would, with only the two URLs to go on.
OTHER_PROCESS = """
import json, os, psycopg, redis
database_url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
with psycopg.connect(database_url) as connection:
    connection.execute("CREATE TABLE looks (id int PRIMARY KEY, name text)")
    connection.execute("INSERT INTO looks VALUES (1, 'linen summer dress')")
    database = connection.execute("SELECT current_database()").fetchone()[0]
    look = connection.execute("SELECT name FROM looks WHERE id = 1").fetchone()[0]
events = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
events.xgroup_create("generation.events", "analytics", id="0", mkstream=True)
event_id = events.xadd("generation.events", {"type": "GenerationCompleted", "generation": "g-1"})
[[stream, [(read_id, fields)]]] = events.xreadgroup("analytics", "worker-1", {"generation.events": ">"})
acked = events.xack("generation.events", "analytics", read_id)
print(json.dumps({"database": database, "look": look, "read": read_id == event_id, "fields": fields,
                  "acked": acked, "version": events.info()["redis_version"]}))
"""


# ---------------------------------------------------------------- infra: which one is used


def test_configured_urls_are_used_as_given_and_nothing_is_started(tmp_path: Path) -> None:
    env = {
        DATABASE_URL_ENV: "postgresql+psycopg://admin:s3cret@db.internal:5432/elsewhere",
        REDIS_URL_ENV: "redis://:hunter2@cache.internal:6379/3",
    }
    with resolve_infrastructure(tmp_path, env=env) as infra:
        assert (infra.database_url, infra.database_origin) == (env[DATABASE_URL_ENV], Origin.ENV)
        assert (infra.redis_url, infra.redis_origin) == (env[REDIS_URL_ENV], Origin.ENV)
        described = "\n".join(infra.describe())
    assert "s3cret" not in described and "hunter2" not in described
    assert list(tmp_path.iterdir()) == []


def test_each_server_is_decided_on_its_own(tmp_path: Path) -> None:
    env = {DATABASE_URL_ENV: "postgresql+psycopg://postgres@db.internal/stylestudio"}
    with resolve_infrastructure(tmp_path, env=env) as infra:
        assert infra.database_origin == Origin.ENV
        assert infra.redis_origin == Origin.LOCALHOST


def test_servers_on_localhost_are_found_and_the_database_is_created(tmp_path: Path) -> None:
    name = f"stylestudio_infra_test_{uuid.uuid4().hex[:8]}"
    infra = resolve_infrastructure(tmp_path, env={DATABASE_NAME_ENV: name})
    try:
        assert (infra.database_origin, infra.redis_origin) == (Origin.LOCALHOST, Origin.LOCALHOST)
        assert infra.database_url == f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        assert infra.redis_url == "redis://127.0.0.1:6379/0"
        with psycopg.connect(libpq_url(infra.database_url)) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (name,)
        assert ensure_database(infra.database_url, name) == infra.database_url  # a second time: no error
        with redis.Redis.from_url(infra.redis_url) as client:
            assert client.ping()
    finally:
        infra.close()
        maintenance = libpq_url(with_database(infra.database_url, "postgres"))
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
    assert list(tmp_path.iterdir()) == []


def test_a_probe_of_an_unreachable_host_gives_up_within_about_a_second() -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing there answers
    for probe in (local_postgres_url, local_redis_url):
        started = time.monotonic()
        assert probe("192.0.2.1", 5432) is None
        assert time.monotonic() - started < 2.0


# ---------------------------------------------------------------- infra: embedded servers


def test_embedded_servers_start_when_nothing_answers_and_serve_other_processes(tmp_path: Path) -> None:
    infra = nothing_local(tmp_path)
    try:
        assert (infra.database_origin, infra.redis_origin) == (Origin.EMBEDDED, Origin.EMBEDDED)
        assert infra.embedded_postgres is not None and infra.embedded_redis is not None
        postgres_pid, redis_pid = infra.embedded_postgres.pid, infra.embedded_redis.pid
        assert infra.database_url.startswith("postgresql+psycopg://postgres@/stylestudio?host=")
        assert infra.redis_url.startswith("unix://")
        assert (tmp_path / "postgres" / "PG_VERSION").exists()

        env = {**os.environ, "DATABASE_URL": infra.database_url, "REDIS_URL": infra.redis_url}
        output = subprocess.run(
            [sys.executable, "-c", OTHER_PROCESS], env=env, capture_output=True, text=True, timeout=60
        )
        assert output.returncode == 0, output.stderr
        seen = json.loads(output.stdout)
        assert seen["database"] == "stylestudio" and seen["look"] == "linen summer dress"
        assert seen["read"] and seen["acked"] == 1
        assert seen["fields"] == {"type": "GenerationCompleted", "generation": "g-1"}
        assert seen["version"].startswith("6.2.")
    finally:
        infra.close()
    assert postgres_pid is not None and redis_pid is not None
    assert gone(postgres_pid) and gone(redis_pid)
    with redis.Redis.from_url(infra.redis_url, socket_connect_timeout=1) as client:
        try:
            client.ping()
            raise AssertionError("embedded Redis still answers after close()")
        except redis.ConnectionError:
            pass


def test_a_second_start_keeps_the_data_of_the_first(tmp_path: Path) -> None:
    with nothing_local(tmp_path) as first:
        with psycopg.connect(libpq_url(first.database_url)) as connection:
            connection.execute("CREATE TABLE plans (name text)")
            connection.execute("INSERT INTO plans VALUES ('pro')")
        with redis.Redis.from_url(first.redis_url) as client:
            client.xadd("billing.events", {"type": "TokensGranted"})

    with nothing_local(tmp_path) as second:
        assert second.database_origin == Origin.EMBEDDED
        with psycopg.connect(libpq_url(second.database_url)) as connection:
            assert connection.execute("SELECT name FROM plans").fetchall() == [("pro",)]
        with redis.Redis.from_url(second.redis_url) as client:
            assert client.xlen("billing.events") == 1


def test_embedded_servers_restart_on_the_same_urls_with_their_data_and_stop_at_close(tmp_path: Path) -> None:
    with nothing_local(tmp_path) as infra:
        assert infra.embedded_postgres is not None and infra.embedded_redis is not None
        with psycopg.connect(libpq_url(infra.database_url)) as connection:
            connection.execute("CREATE TABLE plans (name text)")
            connection.execute("INSERT INTO plans VALUES ('pro')")
        with redis.Redis.from_url(infra.redis_url) as client:
            client.xadd("billing.events", {"type": "TokensGranted"})
        old_postgres, old_redis = infra.embedded_postgres.pid, infra.embedded_redis.pid

        infra.embedded_postgres.restart(down_seconds=0.2)
        infra.embedded_redis.restart(down_seconds=0.2, crash=True)  # the AOF keeps the stream

        new_postgres, new_redis = infra.embedded_postgres.pid, infra.embedded_redis.pid
        assert new_postgres != old_postgres and new_redis != old_redis
        with psycopg.connect(libpq_url(infra.database_url)) as connection:
            assert connection.execute("SELECT name FROM plans").fetchall() == [("pro",)]
        with redis.Redis.from_url(infra.redis_url) as client:
            assert client.xlen("billing.events") == 1
    assert new_postgres is not None and gone(new_postgres) and gone(new_redis)


# A launcher that dies without closing anything: its embedded servers keep running.
KILLED_LAUNCHER = """
import json, os, signal, sys
from pathlib import Path
from kit.infra import resolve_infrastructure
port = int(sys.argv[2])
infra = resolve_infrastructure(Path(sys.argv[1]), postgres_port=port, redis_port=port, env={})
print(json.dumps([infra.embedded_postgres.pid, infra.embedded_redis.pid]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_servers_left_by_a_killed_launcher_are_adopted_and_then_stopped(tmp_path: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_LAUNCHER, str(tmp_path), str(unused_port())],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    postgres_pid, redis_pid = json.loads(killed.stdout)

    with nothing_local(tmp_path) as infra:
        assert infra.embedded_postgres is not None and infra.embedded_redis is not None
        assert (infra.embedded_postgres.pid, infra.embedded_redis.pid) == (postgres_pid, redis_pid)
    assert gone(postgres_pid) and gone(redis_pid)


def test_passwords_are_left_out_of_urls_shown_to_people() -> None:
    assert without_password("postgresql+psycopg://admin:s3cret@db:5432/stylestudio") == (
        "postgresql+psycopg://admin:***@db:5432/stylestudio"
    )
    assert "s3cret" not in without_password("postgresql://admin@/stylestudio?host=/run/pg&password=s3cret")
    assert without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert without_password("unix:///tmp/redis.socket") == "unix:///tmp/redis.socket"


def test_urls_name_another_database_and_drop_the_driver_for_libpq() -> None:
    embedded = "postgresql+psycopg://postgres@/stylestudio?host=/srv/data/postgres"
    assert (
        with_database(embedded, "postgres")
        == "postgresql+psycopg://postgres@/postgres?host=/srv/data/postgres"
    )
    assert libpq_url(embedded) == "postgresql://postgres@/stylestudio?host=/srv/data/postgres"
    assert with_database("postgresql:///stylestudio", "postgres") == "postgresql:///postgres"


# ---------------------------------------------------------------- launcher

# A stand-in for a service: says hello, then says bye and exits 0 on SIGTERM (unless told to ignore it).
STAND_IN = """
import os, signal, sys, time
mode = sys.argv[1]
def bye(*_):
    print("bye", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else bye)
print("hello from", os.getpid(), flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
if mode == "crash":  # once the test creates the trigger file, so the others are surely up by then
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    sys.exit(3)
while True:
    time.sleep(0.05)
"""


def stand_in(name: str, mode: str = "polite", *extra: str) -> Child:
    return Child(name, (sys.executable, "-c", STAND_IN, mode, *extra), dict(os.environ))


async def eventually(condition: Callable[[], bool], attempts: int = 300) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def child_pids(output: str) -> list[int]:
    return [int(line.rsplit(" ", 1)[1]) for line in output.splitlines() if "hello from" in line]


async def test_children_output_is_prefixed_and_a_shutdown_stops_every_child() -> None:
    out = io.StringIO()
    console = Console(out, ("launcher", "users", "generation"), colour=False)
    shutdown = ShutdownRequest()
    run = asyncio.create_task(
        supervise([stand_in("users"), stand_in("generation")], console, shutdown, grace=10)
    )
    await eventually(lambda: len(child_pids(out.getvalue())) == 2)

    shutdown.request()
    assert await run == 0
    lines = out.getvalue().splitlines()
    assert "users      | a warning on stderr" in lines
    assert "users      | bye" in lines and "generation | bye" in lines
    assert all(gone(pid) for pid in child_pids(out.getvalue()))


async def test_a_child_exiting_on_its_own_stops_the_platform_with_a_failure(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(out, ("launcher", "users", "billing"), colour=False)
    trigger = tmp_path / "crash-now"
    children = [stand_in("users"), stand_in("billing", "crash", str(trigger))]
    run = asyncio.create_task(supervise(children, console, ShutdownRequest(), grace=10))
    await eventually(lambda: len(child_pids(out.getvalue())) == 2)

    trigger.touch()
    assert await run == 1
    assert "billing exited on its own with code 3" in out.getvalue()
    assert "users    | bye" in out.getvalue().splitlines()
    assert all(gone(pid) for pid in child_pids(out.getvalue()))


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    out = io.StringIO()
    console = Console(out, ("launcher", "files"), colour=False)
    shutdown = ShutdownRequest()
    run = asyncio.create_task(supervise([stand_in("files", "stubborn")], console, shutdown, grace=0.5))
    await eventually(lambda: len(child_pids(out.getvalue())) == 1)

    started = time.monotonic()
    shutdown.request()
    assert await run == 0
    assert time.monotonic() - started < 5
    assert "still running after 0.5 s; killing it" in out.getvalue()
    assert gone(child_pids(out.getvalue())[0])


def test_names_are_coloured_only_when_asked() -> None:
    plain, coloured = io.StringIO(), io.StringIO()
    Console(plain, ("users",), colour=False).line("users", "listening")
    Console(coloured, ("users",), colour=True).line("users", "listening")
    assert plain.getvalue() == "users | listening\n"
    assert "\x1b[" in coloured.getvalue() and coloured.getvalue().endswith(" | listening\n")
    assert not wants_colour(io.StringIO(), {})


async def test_gateway_is_ready_only_when_readyz_answers_200() -> None:
    async def answer(status: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    ready = await asyncio.start_server(lambda r, w: answer("200 OK", r, w), "127.0.0.1", 0)
    starting = await asyncio.start_server(
        lambda r, w: answer("503 Service Unavailable", r, w), "127.0.0.1", 0
    )
    async with ready, starting:
        assert await gateway_ready(f"127.0.0.1:{ready.sockets[0].getsockname()[1]}")
        assert not await gateway_ready(f"127.0.0.1:{starting.sockets[0].getsockname()[1]}")
    assert not await gateway_ready(f"127.0.0.1:{unused_port()}")


def test_every_service_and_then_the_gateway_get_their_own_environment() -> None:
    infra = Infrastructure(
        "postgresql+psycopg://postgres@db/stylestudio", Origin.ENV, "redis://r/0", Origin.ENV
    )
    service_urls = {name: f"postgresql+psycopg://stylestudio_{name}:pw@db/stylestudio" for name in SERVICES}
    children = platform_children({"PATH": "/usr/bin"}, infra, service_urls)

    assert [child.name for child in children] == [*SERVICES, "gateway"]
    assert children[0].argv[1:] == ("-m", "services.users") and children[-1].argv[1:] == ("-m", "gateway")
    for child in children:
        assert (
            child.env[DATABASE_URL_ENV] == infra.database_url and child.env[REDIS_URL_ENV] == infra.redis_url
        )
        assert child.env["PATH"] == "/usr/bin"
    assert children[1].env[SERVICE_DATABASE_URL_ENV] == service_urls["billing"]
    assert SERVICE_DATABASE_URL_ENV not in children[-1].env


def test_file_links_are_absolute_on_the_gateway_as_make_run_serves_it_unless_set() -> None:
    infra = Infrastructure(
        "postgresql+psycopg://postgres@db/stylestudio", Origin.ENV, "redis://r/0", Origin.ENV
    )
    service_urls = {name: f"postgresql+psycopg://stylestudio_{name}:pw@db/stylestudio" for name in SERVICES}

    def links(base_env: dict[str, str], **settings: str) -> set[str | None]:
        url = LaunchSettings(**settings).gateway_url  # type: ignore[arg-type]
        children = platform_children(base_env, infra, service_urls, gateway_url=url)
        return {child.env.get(FILE_URL_BASE_ENV) for child in children}

    assert links({}) == {"http://127.0.0.1:8080"}
    assert links({}, gateway_addr="127.0.0.1:18443") == {"http://127.0.0.1:18443"}
    # every interface: reached through loopback on this machine; IPv6 keeps its brackets
    assert links({}, gateway_addr="0.0.0.0:18080") == {"http://127.0.0.1:18080"}
    assert links({}, gateway_addr="[::]:18080") == {"http://127.0.0.1:18080"}
    assert links({}, gateway_addr="[::1]:18080") == {"http://[::1]:18080"}
    assert links({}, gateway_addr="studio.lan:18080") == {"http://studio.lan:18080"}
    assert links({}, gateway_tls_cert_file="/tls/gateway.crt") == {"https://127.0.0.1:8080"}
    # what the user set wins, even empty (links as paths)
    assert links({FILE_URL_BASE_ENV: "https://api.example.com"}) == {"https://api.example.com"}
    assert links({FILE_URL_BASE_ENV: ""}) == {""}
