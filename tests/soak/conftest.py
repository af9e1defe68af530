"""A platform of its own for the soak tests (one start per module), after a short real flow."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from bench.soak.invariants import Target
from tests.harness import Platform, TestDatabase, own_database
from tests.soak.flow import PLATFORM_ENV, Flow, real_flow


@pytest.fixture(scope="module")
def soak_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="module")
async def flow(
    soak_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Flow]:
    work_dir = tmp_path_factory.mktemp("soak-invariants")
    engine = create_async_engine(soak_database.admin_url, pool_size=1, max_overflow=0)
    async with Platform(soak_database, redis_url, work_dir, extra_env=PLATFORM_ENV) as platform:
        await platform.start_all()
        async with platform.client() as gateway:
            found = await real_flow(platform, gateway)
        target = Target(
            database_url=soak_database.admin_url,
            redis_url=redis_url,
            redis_prefix=platform.redis_prefix,
            data_dir=work_dir / "data",
            gateway_url=platform.gateway_url,
            sweeper_deadline=timedelta(minutes=10),
        )
        yield Flow(platform=platform, target=target, engine=engine, **found)
    await engine.dispose()
