"""Keepalive: a quiet long-lived call keeps its connection under the kit's ping policy, and loses
it ("Too many pings") under gRPC's default one, which the services had before issue 13.

The interval is scaled down to 200 ms (both ends read it); gRPC's client then pings about once
a second on a connection with a call open (it never pings more often), so a stream that stays
quiet for 6 s is pinged about five times: gRPC's default server policy closes the connection at the
third ping. Each test takes about 6 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from kit.clients import open_channel
from kit.server import server_options

KEEPALIVE_MS = 200
QUIET_SECONDS = 6.0


async def _watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield context.peer().encode()  # which connection the stream is on
    await asyncio.sleep(QUIET_SECONDS)  # nothing on the stream, as when a generation waits in the queue
    yield b"done"


async def _peer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return context.peer().encode()


async def _serve(options: list[tuple[str, int]]) -> tuple[grpc.aio.Server, str]:
    handlers = grpc.method_handlers_generic_handler(
        "test.Quiet",
        {
            "Watch": grpc.unary_stream_rpc_method_handler(_watch),
            "Peer": grpc.unary_unary_rpc_method_handler(_peer),
        },
    )
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers([handlers])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_a_quiet_watch_stream_keeps_its_connection_and_the_channel_keeps_working() -> None:
    server, address = await _serve(server_options(KEEPALIVE_MS))
    channel = open_channel(address, keepalive_ms=KEEPALIVE_MS)
    try:
        watch = channel.unary_stream("/test.Quiet/Watch")(b"", timeout=30)
        first = await watch.read()
        await asyncio.sleep(QUIET_SECONDS / 2)
        during = await channel.unary_unary("/test.Quiet/Peer")(b"", timeout=5)
        last = await watch.read()
        after = await channel.unary_unary("/test.Quiet/Peer")(b"", timeout=5)
        assert last == b"done"
        assert await watch.code() == grpc.StatusCode.OK
        # One connection from start to end: no GOAWAY, no reconnect (a new one has another port).
        assert first == during == after
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_default_server_policy_closes_a_quiet_stream_with_too_many_pings() -> None:
    # What every service ran with before: gRPC's defaults (5 minutes between pings without data).
    server, address = await _serve([("grpc.so_reuseport", 0)])
    channel = open_channel(address, keepalive_ms=KEEPALIVE_MS)
    try:
        watch = channel.unary_stream("/test.Quiet/Watch")(b"", timeout=30)
        await watch.read()
        try:
            while await watch.read() is not grpc.aio.EOF:
                pass
        except grpc.aio.AioRpcError as error:
            failure = error
        else:
            raise AssertionError("the quiet stream survived gRPC's default ping policy")
        assert failure.code() == grpc.StatusCode.UNAVAILABLE
        assert "Too many pings" in (failure.details() or "")
    finally:
        await channel.close()
        await server.stop(None)
