"""Shared fixtures: real PostgreSQL, real Redis, the real platform. See tests/harness/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kit.infra import resolve_infrastructure
from tests.harness import Platform, TestDatabase, own_database

REPO_ROOT = Path(__file__).resolve().parent.parent

# Settings the tests build in-process are a developer's; a test of production's rules says so.
os.environ["STYLESTUDIO_ENVIRONMENT"] = "development"


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[object]:
    """PostgreSQL and Redis: from the environment, on localhost, or embedded under data/."""
    infra = resolve_infrastructure(REPO_ROOT / "data")
    yield infra
    infra.close()


@pytest.fixture(scope="session")
def test_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A fresh database for this run with every service's role, schema and migrations."""
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="session")
def redis_url(infrastructure: object) -> str:
    return str(infrastructure.redis_url)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def platform(
    test_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """All five services and the gateway running as processes, ready."""
    async with Platform(test_database, redis_url, tmp_path_factory.mktemp("platform")) as running:
        await running.start_all()
        yield running


@pytest.fixture
async def gateway(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with platform.client() as client:
        yield client
