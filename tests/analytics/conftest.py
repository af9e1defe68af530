"""The analytics service in-process on a database of its own, so its global numbers are only
this package's records; user tokens are real ES256 JWTs checked against a local JWKS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.analytics.__main__ import definition
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import UsageStore
from stylestudio.analytics.v1 import analytics_pb2_grpc
from tests.harness.in_process import InProcessService, start_in_process


class Analytics(InProcessService):
    """The analytics service in-process, with its store at hand."""

    @property
    def store(self) -> UsageStore:
        return UsageStore(self.service.runtime.db)  # type: ignore[union-attr]

    def user_stub(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return analytics_pb2_grpc.AnalyticsServiceStub(self.channel(as_service=False))

    def service_stub(self) -> analytics_pb2_grpc.AnalyticsServiceStub:
        return analytics_pb2_grpc.AnalyticsServiceStub(self.channel(as_service=True))


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def start_analytics(infrastructure: object, redis_url: str, **overrides: object) -> Analytics:
    parts = await start_in_process(
        "analytics", infrastructure, redis_url, AnalyticsSettings, definition, **overrides
    )
    return Analytics(*parts)


async def stop_analytics(analytics: Analytics) -> None:
    await analytics.stop()


@pytest.fixture(scope="module")
async def analytics(infrastructure: object, redis_url: str) -> AsyncIterator[Analytics]:
    """A fresh analytics service (and database) for each test module."""
    running = await start_analytics(infrastructure, redis_url)
    yield running
    await stop_analytics(running)
