"""Service clients present their credential on every kind of call, streaming included."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from kit.clients import ROUND_ROBIN, channel_target, open_channel
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from tests.harness import Platform


async def test_a_server_streaming_internal_call_carries_the_service_credential(platform: Platform) -> None:
    stub = platform.stub("files", files_pb2_grpc.FilesServiceStub)
    call = stub.ReadFileContent(files_pb2.ReadFileContentRequest(user_id="someone", file_id="no-such-file"))
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        async for _ in call:
            pass
    # Authenticated as a service and past the access check: the file simply does not exist.
    assert answered.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


async def _health_server(name: str) -> tuple[grpc.aio.Server, int]:
    """A server whose health service knows only ``name``: a call tells which server answered."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def test_a_list_of_replicas_is_one_balanced_target() -> None:
    assert channel_target("127.0.0.1:7001") == ("127.0.0.1:7001", [])
    assert channel_target("127.0.0.1:7001, 127.0.0.1:7002") == (
        "ipv4:127.0.0.1:7001,127.0.0.1:7002",
        [ROUND_ROBIN],
    )
    assert channel_target("ipv4:127.0.0.1:7001,127.0.0.1:7002")[1] == [ROUND_ROBIN]
    assert channel_target("[::1]:7001,[::1]:7002")[0] == "ipv6:[::1]:7001,[::1]:7002"


async def test_calls_to_replicas_are_shared_and_skip_a_stopped_one() -> None:
    first, first_port = await _health_server("first")
    second, second_port = await _health_server("second")
    channel = open_channel(f"127.0.0.1:{first_port},127.0.0.1:{second_port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def answered_by_first() -> bool:
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service="first"), timeout=5)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error
            return False
        return True

    try:
        answers = [await answered_by_first() for _ in range(10)]
        assert 0 < answers.count(True) < 10  # both replicas answer: round robin, not pick-first
        await first.stop(None)
        answers = [await answered_by_first() for _ in range(6)]
        assert answers == [False] * 6  # the stopped replica is skipped, no call fails
    finally:
        await channel.close()
        await first.stop(None)
        await second.stop(None)
