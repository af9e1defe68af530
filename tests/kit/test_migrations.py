"""Every service's migrations go up from empty and back down to empty."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from kit import migrations
from kit.settings import SERVICES
from tests.harness import TestDatabase, own_database


@pytest.fixture(scope="module")
def empty_database(infrastructure: object):
    with own_database(infrastructure, migrate=False) as database:
        yield database


def _tables(url: str, schema: str) -> set[str]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("service", SERVICES)
def test_migrations_upgrade_from_empty_and_downgrade_to_empty(
    empty_database: TestDatabase, service: str
) -> None:
    url = empty_database.service_urls[service]
    assert _tables(url, service) == set()
    migrations.upgrade(service, url)
    assert migrations.is_at_head(service, url)
    assert {"outbox", "inbox", "alembic_version"} <= _tables(url, service)
    migrations.downgrade(service, url, "base")
    assert _tables(url, service) <= {"alembic_version"}
    assert migrations.current_revision(service, url) is None
    migrations.upgrade(service, url)  # and up again: downgrades leave nothing behind that blocks it
    assert migrations.is_at_head(service, url)
