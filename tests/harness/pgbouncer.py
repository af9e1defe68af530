"""A real PgBouncer (Debian's package, ``make pgbouncer``) in transaction-pooling mode in front of a
test database: its own ini and auth file in a folder of the test's, on a free port."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from kit.bootstrap import role_name
from tests.harness.platform import TestDatabase, free_port

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


class PgBouncer:
    """A running pgbouncer; ``url(service)``: the service role's URL through it."""

    def __init__(self, database: TestDatabase, port: int, folder: Path, process: subprocess.Popen[bytes]):
        self.database = database
        self.port = port
        self.folder = folder
        self.process = process

    @property
    def log_path(self) -> Path:
        return self.folder / "pgbouncer.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, service: str) -> str:
        direct = make_url(self.database.service_urls[service])
        routed = direct.difference_update_query(["host", "port"]).set(host="127.0.0.1", port=self.port)
        return routed.render_as_string(hide_password=False)


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def pgbouncer_ini(
    database: TestDatabase, port: int, folder: Path, settings: Mapping[str, str | int] | None = None
) -> str:
    """Transaction pooling; clients log in with SCRAM against the roles' passwords, which
    pgbouncer also uses to log in to PostgreSQL."""
    server = make_url(database.admin_url)
    host = server.host or str(server.query.get("host") or "127.0.0.1")
    options: dict[str, str | int] = {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        "unix_socket_dir": "",
        "auth_type": "scram-sha-256",
        "auth_file": str(folder / "userlist.txt"),
        "pool_mode": "transaction",
        # Fewer server connections than the services' pools hold: transactions really share them.
        "default_pool_size": 3,
        "max_client_conn": 500,
        **(settings or {}),
    }
    lines = [
        "[databases]",
        f"{database.name} = host={host} port={server.port or 5432} dbname={database.name}",
        "[pgbouncer]",
        *(f"{key} = {value}" for key, value in options.items()),
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def running_pgbouncer(
    database: TestDatabase, folder: Path, settings: Mapping[str, str | int] | None = None
) -> Iterator[PgBouncer]:
    """Start pgbouncer in front of ``database`` (its services' roles), stop it afterwards.

    It refuses to run as root: then it drops to the owner of PostgreSQL's socket folder (an
    embedded server's) or ``nobody``, after reading its files as root."""
    binary = pgbouncer_binary()
    if binary is None:
        raise AssertionError("pgbouncer is not installed: run `make pgbouncer` (make test does)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    users = "".join(
        f"{_quoted(role_name(service))} {_quoted(make_url(url).password or '')}\n"
        for service, url in database.service_urls.items()
    )
    (folder / "userlist.txt").write_text(users)
    (folder / "userlist.txt").chmod(0o600)
    (folder / "pgbouncer.ini").write_text(pgbouncer_ini(database, port, folder, settings))
    command = [binary]
    if os.geteuid() == 0:
        command += ["-u", _unprivileged_user(database)]
    command.append(str(folder / "pgbouncer.ini"))
    with (folder / "pgbouncer.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
    bouncer = PgBouncer(database, port, folder, process)
    try:
        _wait_listening(bouncer)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _unprivileged_user(database: TestDatabase) -> str:
    socket_folder = make_url(database.admin_url).query.get("host")
    if isinstance(socket_folder, str) and socket_folder.startswith("/"):
        owner = pwd.getpwuid(os.stat(socket_folder).st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"


def _wait_listening(bouncer: PgBouncer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bouncer.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {bouncer.process.returncode}:\n{bouncer.log()}")
        try:
            with socket.create_connection(("127.0.0.1", bouncer.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"pgbouncer not listening after {timeout} s:\n{bouncer.log()}")
