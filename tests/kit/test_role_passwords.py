"""Database role passwords: configured per service, required in production, random in development,
never derived from the service secret; provisioning gives an existing role the current password."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from kit.bootstrap import ProvisioningSettings, development_passwords, provision_sync, role_name
from kit.settings import EXIT_CONFIGURATION, MIN_SECRET_BYTES, SERVICES, InsecureSettings
from tests.harness import TestDatabase, own_database
from tests.harness.platform import REPO_ROOT
from tests.harness.roles import libpq_dsn, password_matches, stored_verifier


@pytest.fixture(scope="module")
def empty_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A database with nothing provisioned yet (each test provisions what it needs)."""
    with own_database(infrastructure, [], migrate=False) as database:
        yield database


def set_role_password(database: TestDatabase, service: str, password: str) -> None:
    with psycopg.connect(libpq_dsn(database.admin_url), autocommit=True) as connection:
        connection.execute(f"ALTER ROLE {role_name(service)} PASSWORD '{password}'")


# The retired STYLESTUDIO_SERVICE_SECRET's development default, from which roles' passwords were derived.
OLD_DEVELOPMENT_SERVICE_SECRET = "dev-only-service-secret-change-me-in-production"


def old_derived_password(service: str, service_secret: str) -> str:
    """What kit.bootstrap used to set: anyone with the (now retired) service secret could compute it."""
    return hmac.new(service_secret.encode(), f"db-role:{service}".encode(), hashlib.sha256).hexdigest()[:32]


def production(**passwords: str) -> ProvisioningSettings:
    values: dict[str, Any] = {f"{service}_db_password": value for service, value in passwords.items()}
    return ProvisioningSettings(environment="production", **values)


def test_production_provisioning_refuses_without_each_services_password(empty_database: TestDatabase) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("STYLESTUDIO_")}
    env |= {
        "STYLESTUDIO_ENVIRONMENT": "production",
        "STYLESTUDIO_DATABASE_URL": empty_database.admin_url,
        "STYLESTUDIO_BILLING_DB_PASSWORD": secrets.token_urlsafe(32),
    }
    finished = subprocess.run(
        [sys.executable, "-m", "kit.bootstrap"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == EXIT_CONFIGURATION, output
    for service in SERVICES:
        named = f"STYLESTUDIO_{service.upper()}_DB_PASSWORD is not set" in output
        assert named == (service != "billing"), output
    assert "Traceback" not in output
    with psycopg.connect(libpq_dsn(empty_database.admin_url)) as connection:
        schemas = connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = ANY(%s)", [list(SERVICES)]
        ).fetchall()
    assert schemas == [], "nothing is provisioned before the refusal"


def test_production_refuses_a_weak_role_password(empty_database: TestDatabase) -> None:
    with pytest.raises(
        InsecureSettings, match=f"STYLESTUDIO_FILES_DB_PASSWORD is shorter than {MIN_SECRET_BYTES}"
    ):
        provision_sync(empty_database.admin_url, ["files"], migrate=False, settings=production(files="short"))


def test_a_role_created_with_the_old_derived_password_gets_the_configured_one(
    empty_database: TestDatabase,
) -> None:
    old = old_derived_password("analytics", secrets.token_urlsafe(32))
    configured = secrets.token_urlsafe(32)
    provision_sync(
        empty_database.admin_url, ["analytics"], migrate=False, settings=production(analytics=configured)
    )
    set_role_password(empty_database, "analytics", old)
    assert password_matches(stored_verifier(empty_database.admin_url, "analytics"), old)

    urls = provision_sync(
        empty_database.admin_url, ["analytics"], migrate=False, settings=production(analytics=configured)
    )

    verifier = stored_verifier(empty_database.admin_url, "analytics")
    assert password_matches(verifier, configured)
    assert not password_matches(verifier, old)
    assert make_url(urls["analytics"]).password == configured
    assert make_url(urls["analytics"]).username == role_name("analytics")


def test_development_passwords_are_random_kept_and_not_derived(
    empty_database: TestDatabase, tmp_path: Path
) -> None:
    kept = tmp_path / "state" / "development-db-passwords.json"
    settings = ProvisioningSettings(environment="development", development_db_passwords_file=kept)

    first = provision_sync(empty_database.admin_url, ["users", "billing"], migrate=False, settings=settings)
    again = provision_sync(empty_database.admin_url, ["users", "billing"], migrate=False, settings=settings)

    users, billing = make_url(first["users"]).password, make_url(first["billing"]).password
    assert users and billing and users != billing
    assert len(users.encode()) >= MIN_SECRET_BYTES
    assert make_url(again["users"]).password == users, "every run on this machine agrees on the password"
    assert users != old_derived_password("users", OLD_DEVELOPMENT_SERVICE_SECRET)
    assert password_matches(stored_verifier(empty_database.admin_url, "users"), users)
    assert kept.stat().st_mode & 0o077 == 0, "only the user can read the kept passwords"


def test_concurrent_first_runs_agree_on_the_development_passwords(tmp_path: Path) -> None:
    kept = tmp_path / "development-db-passwords.json"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: development_passwords(kept, SERVICES), range(8)))
    assert all(result == results[0] for result in results)
    assert set(results[0]) == set(SERVICES)


async def test_the_launcher_provisions_in_development_without_any_password(
    empty_database: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kit.launcher import provision_databases

    monkeypatch.setenv("STYLESTUDIO_DEVELOPMENT_DB_PASSWORDS_FILE", str(tmp_path / "kept.json"))
    for service in SERVICES:
        monkeypatch.delenv(f"STYLESTUDIO_{service.upper()}_DB_PASSWORD", raising=False)
    urls = await asyncio.to_thread(provision_databases, empty_database.admin_url, "development")
    assert set(urls) == set(SERVICES)
    assert all(make_url(url).password for url in urls.values())
