"""The floor under every figure: what one bare grpc.aio unary call costs on this machine.

    .venv/bin/python -m bench.grpc_floor [--calls 20000] [--concurrency 32]

A server process with one generic method that echoes its request (grpc.aio on uvloop,
as the services run, but no kit: no interceptor, no auth, no tracing, no database) and,
in this process, ``--concurrency`` tasks calling it through a grpc.aio channel with a
deadline and two metadata entries, as the services' clients do. Prints calls/s and the
CPU per call of the client and of the server: no Python service on this machine can
answer an RPC for less, whatever it does inside, which is what the benchmarks of billing,
generation and the gateway are held against.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from multiprocessing.synchronize import Event as EventType

import grpc
import uvloop

from bench.cpu import ProcessCpu
from tests.harness import free_port

SERVICE, METHOD = "bench.Floor", "Echo"
METADATA = (("authorization", "Bearer floor"), ("x-request-id", "floor"))


def serve(port: int, ready: EventType) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


async def drive(port: int, calls: int, concurrency: int, server_pid: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/{METHOD}")
        for _ in range(200):  # warm-up: the connection, the first calls' allocations
            await echo(b"warm", timeout=5)

        async def client(count: int) -> None:
            for _ in range(count):
                await echo(b"a small request", timeout=5, metadata=METADATA)

        cpu = ProcessCpu({"client": os.getpid(), "server": server_pid})
        cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(client(calls // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu.stop()
    done = calls // concurrency * concurrency
    client_us = cpu.used["client"] / done * 1e6
    server_us = cpu.used["server"] / done * 1e6
    print(f"{done} unary calls from {concurrency} tasks: {done / elapsed:.0f} calls/s")
    total_us = client_us + server_us
    print(f"CPU per call: client {client_us:.0f} us, server {server_us:.0f} us; total {total_us:.0f} us")
    print(
        f"ceiling on {os.cpu_count()} CPUs if nothing else ran: "
        f"{(os.cpu_count() or 1) / total_us * 1e6:.0f} calls/s "
        f"(load average {', '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=0, help="default: a free one")
    args = parser.parse_args()
    port = args.port or free_port()
    context = multiprocessing.get_context("spawn")  # grpc does not survive a fork of a process using it
    ready = context.Event()
    server = context.Process(target=serve, args=(port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the echo server did not start")
        assert server.pid is not None
        uvloop.run(drive(port, args.calls, args.concurrency, server.pid))
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
