"""A server stream its client walks away from ends cleanly in the kit's interceptor: the call is
logged once as CANCELLED, and nothing escapes as "Task exception was never retrieved" (grpc closes
the abandoned generator from another context than the one the call's context variables were set in).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kit.access import MethodAccess
from kit.admission import InFlightLimiter
from kit.auth import ServiceCredentials
from kit.clients import open_channel
from kit.interceptors import Authenticator, KitServerInterceptor
from kit.server import server_options
from kit.settings import PlatformSettings
from stylestudio.common.v1 import access_pb2

SERVICE = "test.Watcher"
ACCESS = {f"/{SERVICE}/Watch": MethodAccess(access_pb2.ACCESS_PUBLIC)}


async def _watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"now"
    await asyncio.sleep(60)  # a generation waiting in the queue
    yield b"later"


async def test_a_stream_its_client_cancels_ends_as_canceled_with_no_stray_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    stray: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: stray.append(context))
    settings = PlatformSettings(environment="development")
    authenticator = Authenticator(ServiceCredentials.from_settings(settings, "analytics"), None)
    server = grpc.aio.server(
        interceptors=[KitServerInterceptor(authenticator, ACCESS, InFlightLimiter(None, 1.0, "watcher"))],
        options=server_options(),
    )
    handlers = {"Watch": grpc.unary_stream_rpc_method_handler(_watch)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        with caplog.at_level(logging.INFO, logger="stylestudio.rpc"):
            for _ in range(3):
                watch = channel.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=30)
                assert await watch.read() == b"now"
                watch.cancel()
            await asyncio.sleep(0.5)  # the server learns of the cancellations
        ends = [r for r in caplog.records if r.getMessage() == "rpc"]
        assert [getattr(r, "code", None) for r in ends] == ["CANCELLED"] * 3
        assert stray == []
    finally:
        loop.set_exception_handler(previous)
        await channel.close()
        await server.stop(None)
