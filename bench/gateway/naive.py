"""The benchmark's yardstick: a naive transcoder for the one route, Starlette on uvicorn.

What the issue's reference figure measured ("a naive Starlette-on-uvicorn transcoder"):
Starlette routing, a stub on ``kit.clients.open_channel`` (with its interceptors),
``MessageToDict`` and ``JSONResponse``; no metrics, request ids or spans of its own.

    .venv/bin/python -m bench.gateway.naive --port 8081 --backend 127.0.0.1:50152
"""

from __future__ import annotations

import argparse

import uvicorn
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kit.clients import open_channel
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc


def build(backend: str) -> Starlette:
    stubs: dict[str, billing_pb2_grpc.BillingServiceStub] = {}

    async def balance(request: Request) -> JSONResponse:
        if "billing" not in stubs:  # the channel belongs to the serving loop
            stubs["billing"] = billing_pb2_grpc.BillingServiceStub(open_channel(backend))
        metadata = (("authorization", request.headers.get("authorization", "")),)
        response = await stubs["billing"].GetBalance(billing_pb2.GetBalanceRequest(), metadata=metadata)
        return JSONResponse(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))

    return Starlette(routes=[Route("/v1/billing/balance", balance)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    options = parser.parse_args()
    uvicorn.run(
        build(options.backend), host="127.0.0.1", port=options.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
