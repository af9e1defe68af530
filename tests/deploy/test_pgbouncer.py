"""deploy/ puts PgBouncer (transaction pooling) between the services and PostgreSQL: compose and
Kubernetes agree with its config, the services are set for it, its connections fit the server,
and the config and entrypoint work with Debian's pgbouncer 1.18 in front of a real database."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from sqlalchemy.engine import make_url

from kit.settings import SERVICES
from tests.harness import TestDatabase, free_port
from tests.harness.pgbouncer import pgbouncer_binary
from tests.harness.platform import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
INI = DEPLOY / "pgbouncer" / "pgbouncer.ini"
ENTRYPOINT = DEPLOY / "pgbouncer" / "entrypoint.sh"
# What a stock PostgreSQL leaves (max_connections 100 - superuser_reserved_connections 3), and
# what provisioning holds at most beside the pools (its admin connection, a migration's two).
STOCK_SLOTS = 97
PROVISIONING = 3


def _ini() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=None, comment_prefixes=(";", "#"))
    parser.read_string(INI.read_text())
    return parser


def _k8s(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "base" / name).read_text()) if doc]


def _deployment(kind_name: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        for doc in _k8s(path.name):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == kind_name:
                return doc
    raise AssertionError(f"no Deployment {kind_name}")


def _routed(url: str) -> tuple[str, int, str]:
    parsed = make_url(re.sub(r"\$\{[^}]*\}|\$\([^)]*\)", "secret", url))
    return str(parsed.host), int(parsed.port or 5432), str(parsed.database)


def test_transaction_pooling_for_the_database_the_services_use() -> None:
    ini = _ini()
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    assert ini["pgbouncer"]["auth_type"] == "scram-sha-256"
    assert list(ini["databases"]) == ["stylestudio"]
    assert "dbname=stylestudio" in ini["databases"]["stylestudio"]


def test_the_kubernetes_config_map_holds_the_same_ini() -> None:
    (config_map,) = [doc for doc in _k8s("03-pgbouncer.yaml") if doc["kind"] == "ConfigMap"]
    assert config_map["data"]["pgbouncer.ini"] == INI.read_text()


def test_compose_routes_every_service_through_pgbouncer_and_provisioning_around_it() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    port = int(_ini()["pgbouncer"]["listen_port"])
    for service in SERVICES:
        env = compose[service]["environment"]
        assert _routed(env["STYLESTUDIO_SERVICE_DATABASE_URL"]) == ("pgbouncer", port, "stylestudio")
        assert env["STYLESTUDIO_DB_PREPARED_STATEMENTS"] == "false"
        assert env["STYLESTUDIO_MIGRATE_ON_START"] == "false"
        assert "pgbouncer" in compose[service]["depends_on"]
    assert _routed(compose["provision"]["environment"]["STYLESTUDIO_DATABASE_URL"])[:2] == ("postgres", 5432)
    passwords = {f"STYLESTUDIO_{service.upper()}_DB_PASSWORD" for service in SERVICES}
    assert set(compose["pgbouncer"]["environment"]) == passwords


def test_kubernetes_routes_every_service_through_the_pgbouncer_service() -> None:
    (service,) = [doc for doc in _k8s("03-pgbouncer.yaml") if doc["kind"] == "Service"]
    port = int(_ini()["pgbouncer"]["listen_port"])
    assert service["spec"]["ports"][0]["port"] == port
    (config,) = _k8s("01-config.yaml")
    assert config["data"]["STYLESTUDIO_DB_PREPARED_STATEMENTS"] == "false"
    for name in SERVICES:
        (container,) = _deployment(name)["spec"]["template"]["spec"]["containers"]
        env = [variable["name"] for variable in container["env"]]
        values = {variable["name"]: variable.get("value") for variable in container["env"]}
        url = values["STYLESTUDIO_SERVICE_DATABASE_URL"]
        assert _routed(url) == (service["metadata"]["name"], port, "stylestudio")
        assert url.startswith(f"postgresql+psycopg://stylestudio_{name}:$(")
        # $(VAR) is expanded from variables defined before it.
        (password,) = re.findall(r"\$\(([A-Z_]+)\)", url)
        assert env.index(password) < env.index("STYLESTUDIO_SERVICE_DATABASE_URL")
        assert values["STYLESTUDIO_MIGRATE_ON_START"] == "false"


def test_pgbouncers_server_connections_fit_a_stock_postgresql() -> None:
    ini = _ini()["pgbouncer"]
    replicas = int(_deployment("pgbouncer")["spec"]["replicas"])
    per_process = min(int(ini["max_db_connections"]), len(SERVICES) * int(ini["default_pool_size"]))
    assert replicas * per_process + PROVISIONING <= STOCK_SLOTS


def test_the_entrypoint_and_the_ini_work_with_debians_pgbouncer(
    test_database: TestDatabase, tmp_path: Path
) -> None:
    binary = pgbouncer_binary()
    assert binary is not None, "pgbouncer is not installed: run `make pgbouncer` (make test does)"
    server = make_url(test_database.admin_url)
    port = free_port()
    ini = INI.read_text()
    replacements = {
        r"(?m)^stylestudio = .*$": f"stylestudio = host={server.host or server.query.get('host')} "
        f"port={server.port or 5432} dbname={test_database.name}",
        r"(?m)^listen_addr = .*$": "listen_addr = 127.0.0.1",
        r"(?m)^listen_port = .*$": f"listen_port = {port}",
        r"(?m)^auth_file = .*$": f"auth_file = {tmp_path / 'userlist.txt'}",
    }
    for pattern, replacement in replacements.items():
        ini, count = re.subn(pattern, replacement, ini)
        assert count == 1, pattern
    (tmp_path / "pgbouncer.ini").write_text(ini)
    env = {
        "PATH": f"{Path(binary).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PGBOUNCER_AUTH_FILE": str(tmp_path / "userlist.txt"),
        **{
            f"STYLESTUDIO_{service.upper()}_DB_PASSWORD": make_url(url).password or ""
            for service, url in test_database.service_urls.items()
        },
    }
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # pgbouncer refuses to run as root
    log = (tmp_path / "pgbouncer.log").open("wb")
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *user, str(tmp_path / "pgbouncer.ini")], env=env, stdout=log, stderr=log
    )
    try:
        for service, url in test_database.service_urls.items():
            # The ini's database "stylestudio" is the test's database on the server.
            direct = make_url(url).difference_update_query(["host", "port"])
            routed = direct.set(host="127.0.0.1", port=port, database="stylestudio")
            dsn = routed.set(drivername="postgresql").render_as_string(hide_password=False)
            with _connect_when_listening(dsn, process, tmp_path) as connection:
                assert connection.execute("SELECT current_schemas(false)").fetchone() == ([service],)
        assert (tmp_path / "userlist.txt").stat().st_mode & 0o077 == 0
    finally:
        process.terminate()
        process.wait(10)


def _connect_when_listening(
    dsn: str, process: subprocess.Popen[bytes], folder: Path
) -> psycopg.Connection[Any]:
    for _ in range(100):
        assert process.poll() is None, (folder / "pgbouncer.log").read_text()
        try:
            return psycopg.connect(dsn, connect_timeout=2)
        except psycopg.OperationalError as error:
            if "Connection refused" not in str(error):
                raise AssertionError(f"{error}\n{(folder / 'pgbouncer.log').read_text()}") from error
        subprocess.run(["sleep", "0.1"], check=True)
    raise AssertionError((folder / "pgbouncer.log").read_text())


def test_the_entrypoint_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PGBOUNCER_AUTH_FILE": str(tmp_path / "userlist.txt")}
    env |= {f"STYLESTUDIO_{service.upper()}_DB_PASSWORD": "x" * 32 for service in SERVICES[:-1]}
    ran = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 78
    assert "STYLESTUDIO_ANALYTICS_DB_PASSWORD is not set" in ran.stderr


@pytest.mark.parametrize("password", ['with "quotes" and \\ backslash', "plain-token_urlsafe"])
def test_the_entrypoint_writes_each_role_and_password_quoted(tmp_path: Path, password: str) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pgbouncer").write_text('#!/bin/sh\ncat "$PGBOUNCER_AUTH_FILE"\n')
    (fake / "pgbouncer").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "PGBOUNCER_AUTH_FILE": str(tmp_path / "userlist.txt")}
    env |= {f"STYLESTUDIO_{service.upper()}_DB_PASSWORD": password for service in SERVICES}
    ran = subprocess.run(["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30)
    assert ran.returncode == 0, ran.stderr
    quoted = password.replace('"', '""')
    assert ran.stdout.splitlines() == [f'"stylestudio_{service}" "{quoted}"' for service in SERVICES]
