"""Provisioning: one PostgreSQL role and one schema per service, then its migrations.

Each service connects as ``stylestudio_<service>``, which owns its schema and has
no rights on any other: a service cannot read or write another's tables even by
mistake. Run by the launcher, the test harness and the deploy job with an admin URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kit import migrations
from kit.settings import SERVICES, PlatformSettings

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def role_name(service: str) -> str:
    return f"stylestudio_{service}"


def role_password(service: str, settings: PlatformSettings) -> str:
    """``STYLESTUDIO_<SERVICE>_DB_PASSWORD`` if set, else one derived from the service secret."""
    configured = os.environ.get(f"STYLESTUDIO_{service.upper()}_DB_PASSWORD")
    if configured:
        return configured
    secret = settings.service_secret.get_secret_value().encode()
    return hmac.new(secret, f"db-role:{service}".encode(), hashlib.sha256).hexdigest()[:32]


def service_url(admin_url: str, service: str, password: str) -> str:
    url = make_url(admin_url).set(username=role_name(service), password=password)
    return url.render_as_string(hide_password=False)


def provision_sync(
    admin_url: str, services: Sequence[str] = SERVICES, migrate: bool = True
) -> dict[str, str]:
    settings = PlatformSettings()
    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    urls: dict[str, str] = {}
    try:
        with engine.connect() as connection:
            database = connection.execute(sa.text("SELECT current_database()")).scalar_one()
            # Lock out anything not granted explicitly (PUBLIC may otherwise connect and use public).
            connection.execute(sa.text(f'REVOKE ALL ON DATABASE "{database}" FROM PUBLIC'))
            connection.execute(sa.text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
            for service in services:
                password = role_password(service, settings)
                _ensure_role(connection, service, password, database)
                urls[service] = service_url(admin_url, service, password)
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
    admin_url: str, services: Sequence[str] = SERVICES, migrate: bool = True
) -> dict[str, str]:
    """Create roles and schemas (idempotent), migrate, and return each service's own URL."""
    return await asyncio.to_thread(provision_sync, admin_url, services, migrate)


def main() -> None:
    settings = PlatformSettings()
    urls = provision_sync(settings.database_url)
    for service, url in urls.items():
        print(f"{service}: {make_url(url).render_as_string(hide_password=True)}")


if __name__ == "__main__":
    main()
