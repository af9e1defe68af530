"""Admission control: past its cap a process refuses calls from outside at once (RATE_LIMITED,
Retry-After), while health checks and INTERNAL calls finishing accepted work still go through;
a method with rate-limit headers carries the caller's allowance on that refusal too.

A grpc.aio server wired like kit.server's (the kit's interceptor with a limiter of 2), serving
test methods of each access level. About 2 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kit.access import MethodAccess
from kit.admission import InFlightLimiter
from kit.auth import Caller, CallerKind, ServiceCredentials, current_caller
from kit.clients import open_channel
from kit.errors import RateLimited, Reason, Unauthenticated, from_rpc_error
from kit.interceptors import Authenticator, KitServerInterceptor
from kit.ratelimits import (
    LIMIT_HEADER,
    REMAINING_HEADER,
    RESET_HEADER,
    Allowance,
    allowance_readers,
    methods_with_rate_limit_headers,
)
from kit.server import server_options
from kit.settings import PlatformSettings
from stylestudio.billing.v1 import billing_pb2
from stylestudio.common.v1 import access_pb2
from stylestudio.generation.v1 import generation_pb2
from tests.harness.identities import Keyring

SERVICE = "test.Busy"
WORK_SECONDS = 0.8
ACCESS = {
    f"/{SERVICE}/Start": MethodAccess(access_pb2.ACCESS_PUBLIC),
    f"/{SERVICE}/Watch": MethodAccess(access_pb2.ACCESS_PUBLIC),
    f"/{SERVICE}/Finish": MethodAccess(access_pb2.ACCESS_INTERNAL, callers=frozenset({"operator"})),
}


async def _work(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(WORK_SECONDS)
    return b"done"


async def _watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"update"


async def _serve(limiter: InFlightLimiter) -> tuple[grpc.aio.Server, str]:
    settings = PlatformSettings(environment="development")
    authenticator = Authenticator(ServiceCredentials.from_settings(settings, "analytics"), None)
    server = grpc.aio.server(
        interceptors=[KitServerInterceptor(authenticator, ACCESS, limiter)], options=server_options()
    )
    handlers = {
        "Start": grpc.unary_unary_rpc_method_handler(_work),
        "Finish": grpc.unary_unary_rpc_method_handler(_work),
        "Watch": grpc.unary_stream_rpc_method_handler(_watch),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    probes = health.aio.HealthServicer()
    await probes.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(probes, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _outcome(call: object) -> bytes | Exception:
    try:
        return await call  # type: ignore[misc,no-any-return]
    except grpc.aio.AioRpcError as error:
        return error


async def test_past_the_cap_new_calls_are_refused_at_once_and_health_and_internal_calls_go_through() -> None:
    limiter = InFlightLimiter(2, retry_after_seconds=1.0, service="busy")
    server, address = await _serve(limiter)
    anonymous = open_channel(address)
    operator = open_channel(address, Keyring.development().credentials("operator"))
    try:
        start = anonymous.unary_unary(f"/{SERVICE}/Start")
        starts = [asyncio.ensure_future(_outcome(start(b"", timeout=10))) for _ in range(10)]
        await asyncio.sleep(WORK_SECONDS / 4)  # two run, eight were refused
        assert limiter.in_flight == 2
        # Saturated: probes still answer, work already accepted still finishes, a watch is refused.
        probe = await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
        finishes = [operator.unary_unary(f"/{SERVICE}/Finish")(b"", timeout=10) for _ in range(3)]
        watch = anonymous.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=5)
        try:
            await watch.read()
        except grpc.aio.AioRpcError as refused_watch:
            assert refused_watch.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        else:
            raise AssertionError("a watch was admitted past the cap")
        assert await asyncio.gather(*finishes) == [b"done"] * 3

        outcomes = await asyncio.gather(*starts)
        assert outcomes.count(b"done") == 2
        refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(refusals) == 8
        for refusal in refusals:
            assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            error = from_rpc_error(refusal)
            assert error.reason == Reason.RATE_LIMITED
            assert error.retry_after_seconds == 1
            assert "busy" in error.message
        assert limiter.refused == 9  # eight starts and the watch

        # Places are given back however calls end: a new call is admitted, and streams hold none.
        assert limiter.in_flight == 0
        assert await start(b"", timeout=10) == b"done"
        assert [m async for m in anonymous.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=5)] == [b"update"]
        assert limiter.in_flight == 0
    finally:
        await anonymous.close()
        await operator.close()
        await server.stop(None)


async def test_a_call_canceled_by_its_client_gives_its_place_back() -> None:
    limiter = InFlightLimiter(1, retry_after_seconds=1.0, service="busy")
    server, address = await _serve(limiter)
    channel = open_channel(address)
    try:
        start = channel.unary_unary(f"/{SERVICE}/Start")
        with_deadline = await _outcome(start(b"", timeout=WORK_SECONDS / 4))
        assert isinstance(with_deadline, grpc.aio.AioRpcError)
        assert with_deadline.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.1)
        assert limiter.in_flight == 0
        assert await start(b"", timeout=10) == b"done"
    finally:
        await channel.close()
        await server.stop(None)


HOURLY_LIMIT = 2
GENERATE = f"/{SERVICE}/Generate"


class _Hourly:
    """A service's hourly count, for the headers' sake: each finished Generate counts one."""

    def __init__(self) -> None:
        self.used: dict[str, int] = {}

    async def allowance(self, caller: Caller) -> Allowance:
        remaining = max(0, HOURLY_LIMIT - self.used.get(caller.subject, 0))
        return Allowance(HOURLY_LIMIT, remaining, 0 if remaining else 60, datetime.now(UTC))

    async def generate(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(WORK_SECONDS)
        caller = current_caller()
        if self.used.get(caller.subject, 0) >= HOURLY_LIMIT:
            raise RateLimited("Hourly limit reached", retry_after_seconds=60)
        self.used[caller.subject] = self.used.get(caller.subject, 0) + 1
        return b"started"


async def _verify_ada(token: str) -> Caller:
    if token != "ada-token":
        raise Unauthenticated("Invalid or expired credentials")
    return Caller(CallerKind.USER, "ada", plan="free")


def _limits(metadata: object) -> tuple[str, str, str] | None:
    found = {key: value for key, value in metadata or ()}  # type: ignore[attr-defined]
    if LIMIT_HEADER not in found:
        return None
    return found[LIMIT_HEADER], found[REMAINING_HEADER], found[RESET_HEADER]


async def test_every_answer_of_a_method_with_rate_limit_headers_carries_them_admission_refusals_too() -> None:
    limiter, hourly = InFlightLimiter(1, retry_after_seconds=1.0, service="busy"), _Hourly()
    settings = PlatformSettings(environment="development")
    authenticator = Authenticator(ServiceCredentials.from_settings(settings, "analytics"), _verify_ada)
    access = {GENERATE: MethodAccess(access_pb2.ACCESS_USER)}
    interceptor = KitServerInterceptor(
        authenticator, access, limiter, allowances={GENERATE: hourly.allowance}
    )
    server = grpc.aio.server(interceptors=[interceptor], options=server_options())
    handlers = {"Generate": grpc.unary_unary_rpc_method_handler(hourly.generate)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}")
    generate = channel.unary_unary(GENERATE)
    ada = (("authorization", "Bearer ada-token"),)
    try:
        first = generate(b"", metadata=ada, timeout=10)
        await asyncio.sleep(WORK_SECONDS / 4)
        assert limiter.in_flight == 1
        # Refused by admission control before the handler: the caller's allowance all the same.
        refused = await _outcome(generate(b"", metadata=ada, timeout=10))
        assert isinstance(refused, grpc.aio.AioRpcError), refused
        assert from_rpc_error(refused).reason == Reason.RATE_LIMITED
        assert "busy" in from_rpc_error(refused).message
        assert _limits(refused.initial_metadata()) == (str(HOURLY_LIMIT), str(HOURLY_LIMIT), "0")
        # Nobody to describe: refused without them.
        anonymous = await _outcome(generate(b"", timeout=10))
        assert isinstance(anonymous, grpc.aio.AioRpcError)
        assert anonymous.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _limits(anonymous.initial_metadata()) is None

        # Answers count down (read after the handler), and the handler's own refusal says 0.
        assert await first == b"started"
        assert _limits(await first.initial_metadata()) == (str(HOURLY_LIMIT), str(HOURLY_LIMIT - 1), "0")
        second = generate(b"", metadata=ada, timeout=10)
        assert await second == b"started"
        assert _limits(await second.initial_metadata()) == (str(HOURLY_LIMIT), "0", "60")
        over = await _outcome(generate(b"", metadata=ada, timeout=10))
        assert isinstance(over, grpc.aio.AioRpcError)
        assert from_rpc_error(over).message == "Hourly limit reached"
        assert _limits(over.initial_metadata()) == (str(HOURLY_LIMIT), "0", "60")
        bad_token = await _outcome(generate(b"", metadata=(("authorization", "Bearer forged"),), timeout=10))
        assert isinstance(bad_token, grpc.aio.AioRpcError)
        assert bad_token.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _limits(bad_token.initial_metadata()) is None
    finally:
        await channel.close()
        await server.stop(None)


def test_generation_starts_declare_rate_limit_headers_and_a_service_declaring_them_needs_a_reader() -> None:
    generation = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"]
    billing = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
    assert methods_with_rate_limit_headers(generation) == [
        "/stylestudio.generation.v1.GenerationService/CreateGeneration",
        "/stylestudio.generation.v1.GenerationService/BatchCreateGenerations",
    ]
    hourly = _Hourly()
    readers = allowance_readers([(generation, hourly.allowance), (billing, None)])
    assert set(readers) == set(methods_with_rate_limit_headers(generation))
    with pytest.raises(ValueError, match="reads no allowance"):
        allowance_readers([(generation, None)])
