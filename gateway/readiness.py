"""Readiness: the platform is ready when every service's grpc.health.v1 check says SERVING."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Readiness:
    def __init__(self, channels: dict[str, grpc.aio.Channel], timeout_seconds: float) -> None:
        self._stubs = {name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()}
        self._timeout = timeout_seconds

    async def check(self) -> dict[str, str]:
        """Each service's health status name (SERVING, NOT_SERVING, UNREACHABLE)."""
        names = list(self._stubs)
        results = await asyncio.gather(*(self._check_one(name) for name in names))
        return dict(zip(names, results, strict=True))

    async def _check_one(self, name: str) -> str:
        try:
            response = await self._stubs[name].Check(
                health_pb2.HealthCheckRequest(service=""), timeout=self._timeout
            )
        except grpc.aio.AioRpcError:
            return "UNREACHABLE"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
