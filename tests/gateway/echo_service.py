"""The gateway tests' own gRPC service, from a test-only proto compiled at test time.

``compile_protos`` runs grpc_tools' protoc over tests/gateway/protos into a folder of
its own (descriptor set + Python modules); ``EchoService`` serves the compiled
contract with grpc.aio generic handlers, so each RPC shows what the gateway sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, empty_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc

from kit.errors import ERROR_DOMAIN

HERE = Path(__file__).resolve().parent
TEST_PROTOS = HERE / "protos"
REPO_PROTOS = HERE.parent.parent / "protos"
ECHO_PROTO = "gatewaytest/echo/v1/echo.proto"
SERVICE = "gatewaytest.echo.v1.EchoService"
MAX_COUNT = 100
_INTERESTING_METADATA = (
    "authorization",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "stripe-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-forwarded-for",
)


def _include_dirs() -> list[str]:
    grpc_tools_spec = importlib.util.find_spec("grpc_tools")
    api_spec = importlib.util.find_spec("google.api.annotations_pb2")
    assert grpc_tools_spec and grpc_tools_spec.origin and api_spec and api_spec.origin
    return [
        str(Path(grpc_tools_spec.origin).parent / "_proto"),
        str(Path(api_spec.origin).parent.parent.parent),
        str(REPO_PROTOS),
    ]


def compile_protos(proto_root: Path, files: list[str], out: Path, python: bool = True) -> Path:
    """protoc ``files`` (relative to ``proto_root``) into ``out``; returns the descriptor set's path."""
    out.mkdir(parents=True, exist_ok=True)
    descriptor_set = out / "descriptor_set.binpb"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        *(f"--proto_path={path}" for path in _include_dirs()),
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        "--include_source_info",
    ]
    if python:
        args.append(f"--python_out={out}")
    if protoc.main([*args, *files]) != 0:
        raise RuntimeError(f"protoc failed for {files}")
    return descriptor_set


def load_echo_module(out: Path) -> ModuleType:
    """The compiled echo_pb2 (its folder is put on sys.path; the package is test-only)."""
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    for folder in (out / "gatewaytest", out / "gatewaytest/echo", out / "gatewaytest/echo/v1"):
        (folder / "__init__.py").touch()
    return importlib.import_module("gatewaytest.echo.v1.echo_pb2")


@dataclass
class Blob:
    content_type: str
    data: bytes


class EchoService:
    def __init__(self, pb: ModuleType) -> None:
        self.pb = pb
        self.blobs: dict[str, Blob] = {}
        self.canceled_streams = 0

    def generic_handler(self) -> grpc.GenericRpcHandler:
        pb = self.pb

        def unary(fn: Any, request: Any, response: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(fn, request.FromString, response.SerializeToString)

        handlers = {
            "GetThing": unary(self.get_thing, pb.ThingRequest, pb.ThingRequest),
            "GetSpecialThing": unary(self.get_special_thing, pb.ThingRequest, pb.ThingRequest),
            "ListThings": unary(self.list_things, pb.ListThingsRequest, pb.ListThingsResponse),
            "CreateThing": unary(self.echo, pb.Thing, pb.Thing),
            "UpdateThing": unary(self.echo, pb.UpdateThingRequest, pb.UpdateThingRequest),
            "ArchiveThing": unary(self.echo, pb.ArchiveThingRequest, pb.ArchiveThingRequest),
            "Fail": unary(self.fail, pb.FailRequest, empty_pb2.Empty),
            "Hook": unary(self.hook, pb.HookRequest, pb.HookReply),
            "Whoami": unary(self.whoami, pb.WhoamiRequest, pb.WhoamiReply),
            "CountUp": grpc.unary_stream_rpc_method_handler(
                self.count_up, pb.CountUpRequest.FromString, pb.Tick.SerializeToString
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                self.upload, pb.UploadRequest.FromString, pb.UploadSummary.SerializeToString
            ),
            "Download": grpc.unary_stream_rpc_method_handler(
                self.download, pb.DownloadRequest.FromString, _http_body_serializer
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def get_thing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.ThingRequest(id=request.id, note="variable")

    async def get_special_thing(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.ThingRequest(id="special", note="literal")

    async def list_things(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.ListThingsResponse(echo=request)

    async def echo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return request

    async def fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.delay_ms:
            await asyncio.sleep(min(request.delay_ms, 2000) / 1000)
        code = grpc.StatusCode[request.code] if request.code in grpc.StatusCode.__members__ else None
        if code is None or code == grpc.StatusCode.OK:
            return empty_pb2.Empty()
        details = []
        if request.reason:
            info = error_details_pb2.ErrorInfo(
                reason=request.reason, domain=ERROR_DOMAIN, metadata=dict(request.details)
            )
            details.append(_pack(info))
        if request.retry_after_seconds:
            seconds = request.retry_after_seconds
            delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        status = status_pb2.Status(code=code.value[0], message=request.message, details=details)
        await context.abort_with_status(rpc_status.to_status(status))

    async def hook(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        body = request.http_body
        return self.pb.HookReply(
            source=request.source,
            content_type=body.content_type,
            sha256=hashlib.sha256(body.data).hexdigest(),
            size=len(body.data),
            headers=_metadata_of(context),
        )

    async def whoami(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.pb.WhoamiReply(metadata=_metadata_of(context))

    async def count_up(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if not 0 < request.to <= MAX_COUNT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"to must be 1..{MAX_COUNT}")
        try:
            for n in range(1, request.to + 1):
                if n == request.fail_at:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the counter broke")
                yield self.pb.Tick(n=n, last=n == request.to)
                await asyncio.sleep(min(request.delay_ms, 2000) / 1000)
        except asyncio.CancelledError:
            self.canceled_streams += 1
            raise

    async def upload(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        metadata, digest, size, chunks, parts = None, hashlib.sha256(), 0, 0, []
        async for request in requests:
            if request.WhichOneof("payload") == "metadata":
                metadata = request.metadata
                if metadata.category == "reject":  # refuses at once, while the client still sends
                    info = error_details_pb2.ErrorInfo(reason="INVALID_FILE_TYPE", domain=ERROR_DOMAIN)
                    code = grpc.StatusCode.INVALID_ARGUMENT
                    details = [_pack(info)]
                    status = status_pb2.Status(code=code.value[0], message="not an image", details=details)
                    await context.abort_with_status(rpc_status.to_status(status))
            else:
                digest.update(request.chunk)
                size += len(request.chunk)
                chunks += 1
                parts.append(request.chunk)
        if metadata is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "metadata first")
        assert metadata is not None
        blob_id = uuid.uuid4().hex
        self.blobs[blob_id] = Blob(metadata.content_type, b"".join(parts))
        return self.pb.UploadSummary(
            id=blob_id,
            filename=metadata.filename,
            content_type=metadata.content_type,
            category=metadata.category,
            size=size,
            sha256=digest.hexdigest(),
            chunks=chunks,
        )

    async def download(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        from google.api import httpbody_pb2

        blob = self.blobs.get(request.id)
        if blob is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such blob")
        assert blob is not None
        step = 64 * 1024
        for start in range(0, max(len(blob.data), 1), step):
            content_type = blob.content_type if start == 0 else ""
            yield httpbody_pb2.HttpBody(content_type=content_type, data=blob.data[start : start + step])


def _http_body_serializer(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {
        key: value
        for key, value in (context.invocation_metadata() or ())
        if key in _INTERESTING_METADATA and isinstance(value, str)
    }


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def start_server(*handlers: grpc.GenericRpcHandler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    server.add_generic_rpc_handlers(handlers)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # SERVING
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
