"""What the kit's RPC metrics cost per call: the CPU of two echo servers behind the kit's
interceptor (kit/interceptors.py), one recording ``rpc_server_duration_seconds`` and one not.

    .venv/bin/python -m bench.rpc_metrics [--calls 20000] [--rounds 4] [--concurrency 32]

Both servers run at once (grpc.aio on uvloop, the floor's echo method declared PUBLIC, so the
interceptor's span, context, log line and admission run as in a service); the client calls
them in alternating rounds, so a busy machine slows both alike. Prints each server's CPU per
call and the difference, and what one ``MethodRecorder.observe`` costs alone in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import time
from multiprocessing.synchronize import Event as EventType

import grpc
import uvloop
from prometheus_client import CollectorRegistry

from bench.cpu import ProcessCpu
from bench.grpc_floor import METADATA, METHOD, SERVICE
from kit.access import MethodAccess
from kit.auth import ServiceCredentials
from kit.interceptors import Authenticator, KitServerInterceptor
from kit.metrics import RpcMetrics
from kit.server import server_options
from kit.settings import PlatformSettings
from stylestudio.common.v1 import access_pb2
from tests.harness import free_port

ACCESS = {f"/{SERVICE}/{METHOD}": MethodAccess(access_pb2.ACCESS_PUBLIC)}


def serve(port: int, with_metrics: bool, ready: EventType) -> None:
    logging.disable(logging.INFO)  # the rpc log line's formatting is the same in both; not its I/O

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def main() -> None:
        settings = PlatformSettings(environment="development")
        authenticator = Authenticator(ServiceCredentials.from_settings(settings, "analytics"), None)
        metrics = RpcMetrics(CollectorRegistry()) if with_metrics else None
        interceptor = KitServerInterceptor(authenticator, ACCESS, metrics=metrics)
        server = grpc.aio.server(interceptors=[interceptor], options=server_options())
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    uvloop.run(main())


async def drive(
    ports: dict[str, int], pids: dict[str, int], calls: int, rounds: int, concurrency: int
) -> None:
    used = dict.fromkeys(ports, 0.0)
    done = dict.fromkeys(ports, 0)
    channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for name, port in ports.items()}
    try:
        echoes = {name: channel.unary_unary(f"/{SERVICE}/{METHOD}") for name, channel in channels.items()}
        for echo in echoes.values():
            for _ in range(200):  # warm-up: the connection, the first calls' allocations
                await echo(b"warm", timeout=5)
        per_task = calls // rounds // concurrency
        for _ in range(rounds):
            for name, echo in echoes.items():

                async def client(count: int, call: grpc.aio.UnaryUnaryMultiCallable = echo) -> None:
                    for _ in range(count):
                        await call(b"a small request", timeout=5, metadata=METADATA)

                cpu = ProcessCpu({name: pids[name]})
                cpu.start()
                await asyncio.gather(*(client(per_task) for _ in range(concurrency)))
                cpu.stop()
                used[name] += cpu.used[name]
                done[name] += per_task * concurrency
    finally:
        for channel in channels.values():
            await channel.close()
    per_call = {name: used[name] / done[name] * 1e6 for name in ports}
    for name, micros in per_call.items():
        print(f"server {name}: {done[name]} calls, CPU per call {micros:.1f} us")
    added = per_call["with metrics"] - per_call["without metrics"]
    print(
        f"the RPC metrics add {added:.1f} us of server CPU per call (load average {os.getloadavg()[0]:.1f})"
    )


def observe_cost(samples: int = 200_000) -> float:
    """Microseconds of one ``MethodRecorder.observe`` (a cached child's histogram observe)."""
    recorder = RpcMetrics(CollectorRegistry()).for_method(f"/{SERVICE}/{METHOD}")
    started = time.process_time()
    for _ in range(samples):
        recorder.observe(grpc.StatusCode.OK, 0.0012)
    return (time.process_time() - started) / samples * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc_metrics")
    parser.add_argument("--calls", type=int, default=20_000, help="per server")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")  # grpc does not survive a fork of a process using it
    ports = {"without metrics": free_port(), "with metrics": free_port()}
    servers, pids = [], {}
    try:
        for name, port in ports.items():
            ready = context.Event()
            server = context.Process(target=serve, args=(port, name == "with metrics", ready), daemon=True)
            server.start()
            servers.append(server)
            if not ready.wait(30):
                raise SystemExit(f"the {name} server did not start")
            assert server.pid is not None
            pids[name] = server.pid
        uvloop.run(drive(ports, pids, args.calls, args.rounds, args.concurrency))
        print(f"one MethodRecorder.observe alone: {observe_cost():.2f} us")
    finally:
        for server in servers:
            server.terminate()
            server.join(5)


if __name__ == "__main__":
    main()
