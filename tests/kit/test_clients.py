"""Service clients present their credential on every kind of call, streaming included."""

from __future__ import annotations

import grpc
import pytest

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
