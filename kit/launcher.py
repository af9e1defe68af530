"""One command runs the whole platform: `python -m kit.launcher`.

It finds or starts PostgreSQL and Redis (kit.infra), provisions every service's schema and role
(kit.bootstrap), then runs the five services and the gateway as child processes, their output interleaved
on its own stdout, one prefixed line at a time. Ctrl-C or SIGTERM stops the children (SIGTERM, then
SIGKILL after a grace period), then the embedded servers. A child that exits on its own stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from kit.budget import PoolSize, ServerSlots, fit_pools, platform_connections, read_server_slots
from kit.infra import DATABASE_URL_ENV, REDIS_URL_ENV, Infrastructure, resolve_infrastructure
from kit.metrics import METRICS_PATH
from kit.settings import EXIT_CONFIGURATION, SERVICES, Environment, InsecureSettings, PlatformSettings
from kit.spanstore import SPANS_FOLDER

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "gateway"
LAUNCHER = "launcher"
SERVICE_DATABASE_URL_ENV = "STYLESTUDIO_SERVICE_DATABASE_URL"
SPAN_STORE_DIR_ENV = "STYLESTUDIO_SPAN_STORE_DIR"
METRICS_ADDR_ENV = "STYLESTUDIO_METRICS_ADDR"
# Where clients reach the gateway, so the files service's signed links are absolute (docs/files.md).
FILE_URL_BASE_ENV = "STYLESTUDIO_FILE_URL_BASE"
# Hosts that mean "every interface": a gateway bound to one is reached through loopback here.
ANY_INTERFACE = ("", "0.0.0.0", "::")

READINESS_PATH = "/readyz"
READINESS_INTERVAL_SECONDS = 0.5
READINESS_TIMEOUT_SECONDS = 1.0
# a child's output is relayed line by line; a longer line than this is dropped rather than held in memory
LINE_LIMIT_BYTES = 1024 * 1024
# after the children are gone, how long their output may still take to arrive (a grandchild can hold the pipe)
OUTPUT_DRAIN_SECONDS = 2.0
# ANSI colours for the name column: cyan, green, yellow, blue, magenta, and their bright variants
PALETTE = ("36", "32", "33", "34", "35", "96", "92", "93", "94", "95")
ALARM = "1;31"

# A service may use its whole grace period for in-flight RPCs; kill only after that and a margin.
KILL_MARGIN_SECONDS = 5.0


class LaunchSettings(PlatformSettings):
    """The kit's settings (shutdown grace among them), plus `STYLESTUDIO_DATA_DIR` and `_GATEWAY_ADDR`;
    `stylestudio trace` reads them too, to find the span store."""

    # `make run` is a developer's platform unless STYLESTUDIO_ENVIRONMENT says otherwise
    environment: Environment = "development"
    # embedded PostgreSQL and Redis, when neither is configured nor on localhost, keep their data here
    data_dir: Path = REPO_ROOT / "data"
    gateway_addr: str = "127.0.0.1:8080"
    # The gateway's own HTTPS (gateway/settings.py): its links and announcement then say https.
    gateway_tls_cert_file: str = ""
    # Each service's Prometheus port (its STYLESTUDIO_METRICS_ADDR); the gateway's is its own /metrics.
    users_metrics_addr: str = "127.0.0.1:9464"
    billing_metrics_addr: str = "127.0.0.1:9465"
    files_metrics_addr: str = "127.0.0.1:9466"
    generation_metrics_addr: str = "127.0.0.1:9467"
    analytics_metrics_addr: str = "127.0.0.1:9468"

    def metrics_addresses(self) -> dict[str, str]:
        return {service: str(getattr(self, f"{service}_metrics_addr")) for service in SERVICES}

    @property
    def gateway_url(self) -> str:
        """The gateway as a client on this machine reaches it: the address it listens on (loopback
        for every interface) with its scheme. The announcement and, unless STYLESTUDIO_FILE_URL_BASE
        says otherwise, the base of the files service's signed links."""
        host, _, port = self.gateway_addr.rpartition(":")
        if host.strip("[]") in ANY_INTERFACE:
            host = "127.0.0.1"
        return f"{'https' if self.gateway_tls_cert_file else 'http'}://{host}:{port}"

    @property
    def span_store_path(self) -> Path:
        """Where the platform's processes keep their spans (kit/spanstore.py), and where
        `stylestudio trace` looks: STYLESTUDIO_SPAN_STORE_DIR, else <data dir>/spans."""
        return Path(self.span_store_dir) if self.span_store_dir else self.data_dir / SPANS_FOLDER


def metrics_listing(settings: LaunchSettings) -> list[str]:
    """The lines that tell where each process serves its metrics, the gateway last."""
    urls = {service: f"http://{addr}{METRICS_PATH}" for service, addr in settings.metrics_addresses().items()}
    urls[GATEWAY] = f"http://{settings.gateway_addr}{METRICS_PATH}"
    width = max(len(name) for name in urls)
    return [f"metrics of {name.ljust(width)} at {url}" for name, url in urls.items()]


@dataclass(frozen=True)
class Child:
    """A process the launcher runs: the name on its output lines, its command and its whole environment."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]


class Console:
    """The launcher's stdout: every line prefixed with a fixed-width name, coloured only on a terminal."""

    def __init__(self, out: TextIO, names: Sequence[str], *, colour: bool) -> None:
        self._out = out
        self._width = max(len(name) for name in names)
        self._colour = colour
        self._colours = {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(names)}

    def line(self, name: str, text: str, *, alarm: bool = False) -> None:
        label = name.ljust(self._width)
        if self._colour:
            label = _paint(label, self._colours.get(name, "0"))
            text = _paint(text, ALARM) if alarm else text
        self._out.write(f"{label} | {text}\n")
        self._out.flush()


def _paint(text: str, colour: str) -> str:
    return f"\x1b[{colour}m{text}\x1b[0m"


def wants_colour(out: TextIO, env: Mapping[str, str]) -> bool:
    # NO_COLOR is the common convention (no-color.org) for turning colour off on a terminal
    return out.isatty() and not env.get("NO_COLOR")


class ShutdownRequest:
    """Ctrl-C or SIGTERM: the first asks every child to stop, a second one stops waiting for them."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.urgent = asyncio.Event()

    def request(self) -> None:
        if self.requested.is_set():
            self.urgent.set()
        self.requested.set()

    def listen_to_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.request)


@dataclass
class RunningChild:
    child: Child
    process: asyncio.subprocess.Process
    relay: asyncio.Task[None]


async def supervise(
    children: Sequence[Child],
    console: Console,
    shutdown: ShutdownRequest,
    *,
    grace: float,
    cwd: Path | None = None,
) -> int:
    """Run the children until a shutdown is requested (returns 0) or one of them exits on its own (1).

    Either way every child is stopped before this returns: SIGTERM, then SIGKILL for those still running
    after `grace` seconds (or at once, on a second shutdown request).
    """
    running: list[RunningChild] = []
    try:
        for child in children:
            running.append(await start_child(child, console, cwd))
        return await _watch(running, console, shutdown)
    finally:
        await _stop_children(running, console, shutdown, grace)


async def start_child(child: Child, console: Console, cwd: Path | None) -> RunningChild:
    process = await asyncio.create_subprocess_exec(
        *child.argv,
        cwd=cwd,
        env=dict(child.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # its own process group: Ctrl-C on the terminal reaches only the launcher, which stops the
        # children in order, and SIGKILL can take a child's own children with it
        process_group=0,
        limit=LINE_LIMIT_BYTES,
    )
    assert process.stdout is not None
    relay = asyncio.create_task(relay_output(child.name, process.stdout, console))
    return RunningChild(child, process, relay)


async def relay_output(name: str, stream: asyncio.StreamReader, console: Console) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:
            console.line(name, f"(dropped a line longer than {LINE_LIMIT_BYTES} bytes)")
            continue
        if not raw:
            return
        console.line(name, raw.decode(errors="replace").rstrip("\r\n"))


async def _watch(running: Sequence[RunningChild], console: Console, shutdown: ShutdownRequest) -> int:
    exits = {asyncio.create_task(member.process.wait()): member for member in running}
    requested = asyncio.create_task(shutdown.requested.wait())
    try:
        done, _ = await asyncio.wait({requested, *exits}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (requested, *exits):
            task.cancel()
    if requested in done:
        console.line(LAUNCHER, "stopping the platform (Ctrl-C again to stop waiting for it)")
        return 0
    quitter = next(exits[task] for task in done)
    console.line(
        LAUNCHER,
        f"{quitter.child.name} exited on its own with code {quitter.process.returncode}; "
        "stopping the platform",
        alarm=True,
    )
    return 1


async def _stop_children(
    running: Sequence[RunningChild], console: Console, shutdown: ShutdownRequest, grace: float
) -> None:
    living = [member for member in running if member.process.returncode is None]
    for member in living:
        with contextlib.suppress(ProcessLookupError):
            member.process.send_signal(signal.SIGTERM)
    all_exited: asyncio.Future[Any] = asyncio.gather(*(member.process.wait() for member in living))
    urgent: asyncio.Future[Any] = asyncio.create_task(shutdown.urgent.wait())
    await asyncio.wait({all_exited, urgent}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    urgent.cancel()
    for member in living:
        if member.process.returncode is None:
            console.line(member.child.name, f"still running after {grace:g} s; killing it", alarm=True)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(member.process.pid, signal.SIGKILL)
    # on Python 3.11 wait() also waits for the child's output pipe to close, which a grandchild can hold
    ending: set[asyncio.Future[Any]] = {all_exited, *(member.relay for member in running)}
    _, stuck = await asyncio.wait(ending, timeout=OUTPUT_DRAIN_SECONDS)
    for task in stuck:
        task.cancel()


async def gateway_ready(addr: str) -> bool:
    """True when GET /readyz on the gateway answers 200 within a second."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    # a gateway listening on every interface is reached through loopback
    probe_host = "127.0.0.1" if host in ANY_INTERFACE else host
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(probe_host, int(port))
            try:
                request = f"GET {READINESS_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    fields = status_line.split()
    return len(fields) >= 2 and fields[1] == b"200"


async def announce_when_ready(addr: str, url: str, console: Console, shutdown: ShutdownRequest) -> None:
    while not shutdown.requested.is_set():
        if await gateway_ready(addr):
            console.line(LAUNCHER, f"Style Studio is ready at {url}")
            return
        await asyncio.sleep(READINESS_INTERVAL_SECONDS)


async def run_platform(children: Sequence[Child], console: Console, settings: LaunchSettings) -> int:
    shutdown = ShutdownRequest()
    shutdown.listen_to_signals()
    ready = announce_when_ready(settings.gateway_addr, settings.gateway_url, console, shutdown)
    announcement = asyncio.create_task(ready)
    try:
        grace = settings.shutdown_grace_seconds + KILL_MARGIN_SECONDS
        return await supervise(children, console, shutdown, grace=grace, cwd=REPO_ROOT)
    finally:
        announcement.cancel()


def provision_databases(admin_url: str, environment: Environment) -> dict[str, str]:
    """Each service's schema, role and migrations, done by kit.bootstrap; returns each service's own URL.

    In development the roles' passwords are generated (and kept) unless set; production needs them set.
    """
    # imported here: bootstrap brings SQLAlchemy, Alembic and every service's migrations, needed only now
    from kit.bootstrap import ProvisioningSettings, provision

    settings = ProvisioningSettings(environment=environment)
    return asyncio.run(provision(admin_url, SERVICES, settings=settings))


def service_pool(service: str, pool: PoolSize | None = None) -> PoolSize:
    """The pool ``service`` would have from this environment (or given ``pool``), as its own
    settings decide it (generation raises its pool to fit its workers)."""
    module = importlib.import_module(f"services.{service}.settings")
    settings_type = getattr(module, f"{service.capitalize()}Settings")
    overrides = {} if pool is None else {"db_pool_size": pool.pool_size, "db_max_overflow": pool.max_overflow}
    settings = settings_type(**overrides)
    return PoolSize(settings.db_pool_size, settings.db_max_overflow)


def size_pools(
    wanted: Mapping[str, PoolSize], floors: Mapping[str, PoolSize], slots: ServerSlots
) -> tuple[dict[str, PoolSize], str, bool]:
    """The pools the children get, to fit the slots free now (the server's available slots less
    the connections other clients hold, the launcher's own query excluded); a line saying so,
    and whether it is a warning (the platform does not fit even at its smallest)."""
    free = slots.available - max(slots.in_use - 1, 0)
    total = platform_connections(wanted)

    def listing(pools: Mapping[str, PoolSize]) -> str:
        return ", ".join(f"{name} {pool.describe()}" for name, pool in pools.items())

    server = f"PostgreSQL has {slots.describe()}, {slots.in_use - 1} in use by other clients: {free} free"
    if total <= free:
        return dict(wanted), f"{server}; the platform may open {total} (pools {listing(wanted)})", False
    sized = fit_pools(wanted, floors, free)
    fitted = platform_connections(sized)
    if fitted <= free:
        line = (
            f"{server}; the platform's pools ({listing(wanted)}) may open {total}: "
            f"sized to {listing(sized)}, {fitted}"
        )
        return sized, line, False
    line = (
        f"{server}; the platform may open {fitted} even with its smallest pools ({listing(sized)}): "
        "it may run out of connections (raise max_connections, stop other clients, or see docs/operations.md)"
    )
    return sized, line, True


def plan_pools(admin_url: str, console: Console) -> dict[str, PoolSize] | None:
    """Compare the platform's connections with the server's slots and size the pools to fit."""
    try:
        slots = read_server_slots(admin_url)
    except Exception as error:  # the services' own check still runs; the launcher only sizes
        console.line(LAUNCHER, f"could not read PostgreSQL's connection settings ({type(error).__name__})")
        return None
    wanted = {name: service_pool(name) for name in SERVICES}
    floors = {name: service_pool(name, PoolSize(1, 0)) for name in SERVICES}
    pools, line, alarm = size_pools(wanted, floors, slots)
    console.line(LAUNCHER, f"database connections: {line}", alarm=alarm)
    return pools


def pool_env(pool: PoolSize) -> dict[str, str]:
    """A child's pool settings, and its budget: what the launcher counted for it."""
    return {
        "STYLESTUDIO_DB_POOL_SIZE": str(pool.pool_size),
        "STYLESTUDIO_DB_MAX_OVERFLOW": str(pool.max_overflow),
        "STYLESTUDIO_DB_CONNECTION_BUDGET": str(pool.connections),
    }


def platform_children(
    base_env: Mapping[str, str],
    infrastructure: Infrastructure,
    service_urls: Mapping[str, str],
    pools: Mapping[str, PoolSize] | None = None,
    *,
    span_store: Path | None = None,
    metrics_addresses: Mapping[str, str] | None = None,
    gateway_url: str | None = None,
) -> list[Child]:
    """The five services, then the gateway, each with its own copy of the environment (and the
    pool ``pools`` gives it, and the metrics port ``metrics_addresses`` gives it), keeping their spans
    in ``span_store`` and making file links absolute on ``gateway_url`` unless the environment says."""
    shared = {
        # Lines for a person at a terminal; set STYLESTUDIO_LOG_FORMAT=json to see what production logs.
        "STYLESTUDIO_LOG_FORMAT": "text",
        # `make run` is a developer's platform: its stand-ins and generated secrets are allowed.
        "STYLESTUDIO_ENVIRONMENT": "development",
        **({SPAN_STORE_DIR_ENV: str(span_store)} if span_store is not None else {}),
        # an app served from another origin puts a result's link in <img src>: relative, it would
        # point at the app's own origin
        **({FILE_URL_BASE_ENV: gateway_url} if gateway_url is not None else {}),
        **base_env,
        DATABASE_URL_ENV: infrastructure.database_url,
        REDIS_URL_ENV: infrastructure.redis_url,
        # children write to a pipe, where Python would otherwise hold their lines back in a buffer
        "PYTHONUNBUFFERED": "1",
    }
    missing = [name for name in SERVICES if name not in service_urls]
    if missing:
        raise RuntimeError(f"provisioning returned no database URL for {', '.join(missing)}")
    children = [
        Child(
            name,
            (sys.executable, "-m", f"services.{name}"),
            {
                **shared,
                SERVICE_DATABASE_URL_ENV: service_urls[name],
                **(pool_env(pools[name]) if pools and name in pools else {}),
                **({METRICS_ADDR_ENV: metrics_addresses[name]} if metrics_addresses else {}),
            },
        )
        for name in SERVICES
    ]
    children.append(Child(GATEWAY, (sys.executable, "-m", GATEWAY), dict(shared)))
    return children


def launch(settings: LaunchSettings, console: Console) -> int:
    infrastructure = resolve_infrastructure(settings.data_dir)
    try:
        for description in infrastructure.describe():
            console.line(LAUNCHER, description)
        service_urls = provision_databases(infrastructure.database_url, settings.environment)
        pools = plan_pools(infrastructure.database_url, console)
        children = platform_children(
            os.environ,
            infrastructure,
            service_urls,
            pools,
            span_store=settings.span_store_path,
            metrics_addresses=settings.metrics_addresses(),
            gateway_url=settings.gateway_url,
        )
        console.line(
            LAUNCHER,
            f"traces are kept in {children[0].env.get(SPAN_STORE_DIR_ENV) or 'no span store'}: "
            "`stylestudio trace <generation id>` prints one",
        )
        for line in metrics_listing(settings):
            console.line(LAUNCHER, line)
        base = children[0].env.get(FILE_URL_BASE_ENV)
        console.line(
            LAUNCHER, f"signed file links start with {base}" if base else "signed file links are paths"
        )
        return asyncio.run(run_platform(children, console, settings))
    finally:
        infrastructure.close()


def main(argv: list[str] | None = None) -> None:
    """`stylestudio run` (or `make run`, `python -m kit.launcher`): settings from the environment."""
    import argparse

    argparse.ArgumentParser(
        prog="stylestudio run",
        description="Run the whole platform: PostgreSQL and Redis (found or embedded), provisioning, "
        "the five services and the gateway, until Ctrl-C.",
    ).parse_args(argv)
    settings = LaunchSettings()
    console = Console(sys.stdout, (LAUNCHER, *SERVICES, GATEWAY), colour=wants_colour(sys.stdout, os.environ))
    try:
        code = launch(settings, console)
    except KeyboardInterrupt:
        # Ctrl-C before the children were up (while starting PostgreSQL or provisioning) is a normal stop
        code = 0
    except InsecureSettings as refusal:  # production provisioning without the roles' passwords
        console.line(LAUNCHER, str(refusal), alarm=True)
        code = EXIT_CONFIGURATION
    console.line(LAUNCHER, "stopped" if code == 0 else f"stopped with exit code {code}", alarm=code != 0)
    sys.exit(code)


if __name__ == "__main__":
    main()
