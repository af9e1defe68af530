"""The benchmark's floor: the least a Python front on grpc.aio can do for the one route.

Not a gateway: a bare asyncio protocol on uvloop that finds the end of each request's
headers, copies its Authorization header into one grpc.aio call to GetBalance and writes
a fixed-shape JSON answer. No HTTP parsing or validation, no routing, no errors, no
metrics, request ids or spans. Whatever a real gateway on grpc.aio does costs more than
this, so its figure bounds what any of them can reach on the machine at hand.

    .venv/bin/python -m bench.gateway.floor --port 8082 --backend 127.0.0.1:50152
"""

from __future__ import annotations

import argparse
import asyncio
import re

import grpc
import uvloop

from stylestudio.billing.v1 import billing_pb2

METHOD = "/stylestudio.billing.v1.BillingService/GetBalance"
REQUEST = billing_pb2.GetBalanceRequest().SerializeToString()
AUTHORIZATION = re.compile(rb"\r\nauthorization: *([^\r]*)", re.IGNORECASE)


class FloorProtocol(asyncio.Protocol):
    def __init__(self, call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        self._call = call
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._answering: set[asyncio.Task[None]] = set()  # referenced until done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:  # wrk sends no bodies on GET
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            found = AUTHORIZATION.search(head)
            token = found.group(1).decode() if found else ""
            task = asyncio.ensure_future(self._answer(token))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, token: str) -> None:
        raw = await self._call(REQUEST, timeout=5, metadata=(("authorization", token),))
        balance = billing_pb2.GetBalanceResponse.FromString(raw)
        body = b'{"balance":"%d","reserved":"%d","available":"%d"}' % (
            balance.balance,
            balance.reserved,
            balance.available,
        )
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )


async def serve(port: int, backend: str) -> None:
    channel = grpc.aio.insecure_channel(backend)
    call = channel.unary_unary(METHOD)
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(call), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True)
    options = parser.parse_args()
    uvloop.run(serve(options.port, options.backend))


if __name__ == "__main__":
    main()
