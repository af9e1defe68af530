"""A trivial BillingService for the gateway benchmark: GetBalance answers a constant at once.

It stands in for the billing service so the benchmark measures the layers in front
of it (our gateway, Envoy's transcoder, or nothing) rather than PostgreSQL.

    .venv/bin/python -m bench.gateway.backend --port 50152
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc

BALANCE = billing_pb2.GetBalanceResponse(balance=120, reserved=20, available=100)


class TrivialBilling(billing_pb2_grpc.BillingServiceServicer):
    async def GetBalance(self, request: billing_pb2.GetBalanceRequest, context: Any) -> Any:
        return BALANCE


async def serve(port: int) -> None:
    server = grpc.aio.server()
    billing_pb2_grpc.add_BillingServiceServicer_to_server(TrivialBilling(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
