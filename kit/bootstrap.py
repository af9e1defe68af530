"""Provisioning: one PostgreSQL role and one schema per service, then its migrations.

Each service connects as ``stylestudio_<service>``, which owns its schema and has
no rights on any other: a service cannot read or write another's tables even by
mistake. Run by the launcher, the test harness and the deploy job with an admin URL.

Each role's password comes from ``STYLESTUDIO_<SERVICE>_DB_PASSWORD``; production
refuses to provision without them (or with weak ones). In development a missing one
is generated once and kept in a file of the user's (roles are shared by every
database of the cluster, so every run on the machine must agree on them). Every
provisioning sets the role's password again, so a role created with an older
password gets the current one.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from kit import migrations
from kit.settings import (
    EXIT_CONFIGURATION,
    SERVICES,
    InsecureSettings,
    PlatformSettings,
    SecretCheck,
)

log = logging.getLogger("stylestudio.bootstrap")

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


class ProvisioningSettings(PlatformSettings):
    """The admin URL (``database_url``) and the password of each service's role."""

    users_db_password: SecretStr = SecretStr("")
    billing_db_password: SecretStr = SecretStr("")
    files_db_password: SecretStr = SecretStr("")
    generation_db_password: SecretStr = SecretStr("")
    analytics_db_password: SecretStr = SecretStr("")
    # Development only: where passwords generated for unset variables are kept.
    development_db_passwords_file: Path = _state_home() / "stylestudio" / "development-db-passwords.json"

    def service_key_problems(self) -> list[str]:
        return []  # it calls no service either

    def db_password_check(self, service: str) -> SecretCheck:
        return self.secret_check(f"{service}_db_password")


def role_name(service: str) -> str:
    return f"stylestudio_{service}"


def role_passwords(services: Sequence[str], settings: ProvisioningSettings) -> dict[str, str]:
    """Each role's password: configured, else (development only) generated and kept."""
    checks = {service: settings.db_password_check(service) for service in services}
    if settings.is_production:
        problems = [problem for check in checks.values() if (problem := check.problem())]
        if problems:
            raise InsecureSettings(problems)
        return {service: check.value for service, check in checks.items()}
    missing = [service for service, check in checks.items() if not check.value]
    generated = development_passwords(settings.development_db_passwords_file, missing) if missing else {}
    return {service: check.value or generated[service] for service, check in checks.items()}


def development_passwords(path: Path, services: Sequence[str]) -> dict[str, str]:
    """Random passwords for ``services``, the same for every run of this user on this machine."""
    kept = _read_passwords(path)
    if any(service not in kept for service in services):
        try:
            kept = _add_missing_passwords(path)
        except OSError as error:  # an unwritable home: this run's passwords only
            log.warning(
                "development database passwords not kept", extra={"path": str(path), "error": str(error)}
            )
            return {service: kept.get(service) or secrets.token_urlsafe(32) for service in services}
    return {service: kept[service] for service in services}


def _add_missing_passwords(path: Path) -> dict[str, str]:
    """Under an exclusive lock (concurrent first runs: launcher, tests), read the kept passwords,
    add the missing ones and write them back whole, so every run ends with the same file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(path.with_name(f".{path.name}.lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = _read_passwords(path)
        wanted = {service: secrets.token_urlsafe(32) for service in SERVICES if service not in kept}
        if wanted:
            kept |= wanted
            _keep_passwords(path, kept)
        return kept
    finally:
        os.close(lock)  # closing releases the lock


def _read_passwords(path: Path) -> dict[str, str]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return (
        {str(k): str(v) for k, v in found.items() if isinstance(v, str) and v}
        if isinstance(found, dict)
        else {}
    )


def _keep_passwords(path: Path, passwords: Mapping[str, str]) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(dict(passwords), out)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def service_url(admin_url: str, service: str, password: str) -> str:
    url = make_url(admin_url).set(username=role_name(service), password=password)
    return url.render_as_string(hide_password=False)


def provision_sync(
    admin_url: str,
    services: Sequence[str] = SERVICES,
    migrate: bool = True,
    settings: ProvisioningSettings | None = None,
) -> dict[str, str]:
    # Refused before anything is touched: production without each role's password.
    passwords = role_passwords(services, settings or ProvisioningSettings())
    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    urls: dict[str, str] = {}
    try:
        with engine.connect() as connection:
            database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
            # Lock out anything not granted explicitly (PUBLIC may otherwise connect and use public).
            connection.execute(sa.text(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC'))
            connection.execute(sa.text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
            for service in services:
                _ensure_role(connection, service, passwords[service], database)
                urls[service] = service_url(admin_url, service, passwords[service])
    finally:
        engine.dispose()
    if migrate:
        for service in services:
            migrations.upgrade(service, urls[service])
    return urls


def _ensure_role(connection: sa.Connection, service: str, password: str, database: str) -> None:
    role = role_name(service)
    assert _IDENTIFIER.match(role) and _IDENTIFIER.match(service), "service names are identifiers"
    # Roles are cluster-wide; several databases (test runs) share them. Creation may race.
    exists = connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
    if not exists:
        try:
            connection.execute(sa.text(f"CREATE ROLE {role} LOGIN"))
        except sa.exc.ProgrammingError as error:
            if "already exists" not in str(error):
                raise
    # Utility statements take no bind parameters: quote the password as a literal.
    literal = "'" + password.replace("'", "''").replace(":", "\\:") + "'"
    connection.execute(
        sa.text(f"ALTER ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {literal}")
    )
    connection.execute(sa.text(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {role}'))
    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {service} AUTHORIZATION {role}"))
    connection.execute(sa.text(f"ALTER SCHEMA {service} OWNER TO {role}"))
    connection.execute(sa.text(f"REVOKE ALL ON SCHEMA {service} FROM PUBLIC"))
    connection.execute(sa.text(f'ALTER ROLE {role} IN DATABASE "{database}" SET search_path = {service}'))


async def provision(
    admin_url: str,
    services: Sequence[str] = SERVICES,
    migrate: bool = True,
    settings: ProvisioningSettings | None = None,
) -> dict[str, str]:
    """Create roles and schemas (idempotent), migrate, and return each service's own URL."""
    return await asyncio.to_thread(provision_sync, admin_url, services, migrate, settings)


def main(argv: list[str] | None = None) -> None:
    """`stylestudio bootstrap` (or `python -m kit.bootstrap`): settings from the environment only."""
    import argparse

    from kit.logs import setup_logging

    argparse.ArgumentParser(
        prog="stylestudio bootstrap",
        description="Create every service's role and schema and run its migrations, on "
        "STYLESTUDIO_DATABASE_URL (an admin URL); prints each service's own URL, passwords hidden.",
    ).parse_args(argv)
    settings = ProvisioningSettings()
    setup_logging("provision", settings.log_level, settings.log_format)
    try:
        urls = provision_sync(settings.database_url, settings=settings)
    except InsecureSettings as refusal:
        log.critical(str(refusal))
        sys.exit(EXIT_CONFIGURATION)
    for service, url in urls.items():
        print(f"{service}: {make_url(url).render_as_string(hide_password=True)}")


if __name__ == "__main__":
    main()
