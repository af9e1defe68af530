"""What a service built from the kit does with bad requests and failed statements, over gRPC.

A request breaking kit.validation's rules, or bytes protobuf cannot decode, is refused as
INVALID_ARGUMENT before the handler runs; a value PostgreSQL cannot take is a 400 too; a
handler whose SQL fails otherwise answers INTERNAL, and its log line and span carry the
error's class and SQLSTATE, never the statement, its parameters or the value PostgreSQL quotes.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import sqlalchemy as sa
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.ext.asyncio import create_async_engine

from kit.clients import open_channel
from kit.logs import JsonFormatter
from kit.server import RunningService
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.harness import TestDatabase
from tests.harness.identities import Keyring
from tests.kit.note_service import notes, running_note_service

METHOD = "/stylestudio.analytics.v1.AnalyticsService/GetUserActivitySummary"
spans = InMemorySpanExporter()


@pytest.fixture(scope="module")
async def note_service(kit_database: TestDatabase, redis_url: str) -> AsyncIterator[RunningService]:
    async with running_note_service(kit_database.service_urls["analytics"], redis_url, spans) as service:
        yield service


@pytest.fixture
async def channel(note_service: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    runtime = note_service.runtime
    assert runtime is not None
    # The summary's declared caller (development keys: the service has no key settings).
    opened = open_channel(runtime.settings.analytics_addr, Keyring.development().credentials("operator"))
    yield opened
    await opened.close()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """What the service's log lines say, formatted as in production (kit.logs)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("kit-tests"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, error
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def notes_with(note_service: RunningService, text: str) -> int:
    runtime = note_service.runtime
    assert runtime is not None
    engine = create_async_engine(str(runtime.settings.service_database_url))
    try:
        async with engine.connect() as connection:
            found = await connection.scalar(sa.select(sa.func.count()).where(notes.c.text == text))
    finally:
        await engine.dispose()
    return int(found or 0)


async def test_a_control_character_is_refused_before_the_handler_runs(
    note_service: RunningService, channel: grpc.aio.Channel
) -> None:
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    text = "bell\x07in-a-user-id"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest(user_id=text))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(refused.value)
    assert (info.reason, info.metadata["field"]) == ("VALIDATION_ERROR", "userId")
    assert await notes_with(note_service, text) == 0  # the handler never ran
    await stub.GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest(user_id="clean"))
    assert await notes_with(note_service, "clean") == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x02\xc3\x28",  # field 1 (user_id), a string that is not UTF-8
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x0a\x05ab",  # a length running past the end
    ],
)
async def test_bytes_protobuf_cannot_decode_are_invalid_argument_not_internal(
    channel: grpc.aio.Channel, payload: bytes
) -> None:
    raw = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await raw(payload)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "VALIDATION_ERROR"


async def test_access_is_checked_before_the_request(note_service: RunningService) -> None:
    """An anonymous caller learns nothing about the request's rules: it is refused first."""
    runtime = note_service.runtime
    assert runtime is not None
    anonymous = open_channel(runtime.settings.analytics_addr)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await analytics_pb2_grpc.AnalyticsServiceStub(anonymous).GetUserActivitySummary(
                analytics_pb2.GetUserActivitySummaryRequest(user_id="\x00")
            )
    finally:
        await anonymous.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_failed_statement_leaves_its_parameters_out_of_the_log_and_the_span(
    channel: grpc.aio.Channel, captured_logs: io.StringIO
) -> None:
    secret = "duplicate: grace@example.com 203.0.113.7 a prompt about a red dress"
    spans.clear()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await analytics_pb2_grpc.AnalyticsServiceStub(channel).GetUserActivitySummary(
            analytics_pb2.GetUserActivitySummaryRequest(user_id=secret)
        )
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "grace" not in (failed.value.details() or "")

    for _ in range(100):
        server = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER" and s.name == METHOD]
        if server:
            break
        await asyncio.sleep(0.05)
    (span,) = server
    (event,) = [event for event in span.events if event.name == "exception"]
    recorded = " ".join(str(value) for value in (*span.attributes.values(), *event.attributes.values()))  # type: ignore[union-attr]
    assert "UniqueViolation" in recorded and "SQLSTATE 23505" in recorded
    log = captured_logs.getvalue()
    assert "unhandled error" in log and "UniqueViolation" in log and "kit_unique_notes" in log
    for text in (recorded, log):
        assert "grace" not in text and "203.0.113.7" not in text and "red dress" not in text
        assert "INSERT" not in text and "CREATE" not in text


async def test_a_value_the_database_cannot_read_is_a_400_logged_without_the_value(
    channel: grpc.aio.Channel, captured_logs: io.StringIO
) -> None:
    """What the descriptors cannot see (text inside a webhook's JSON) is still the client's:
    a data exception of PostgreSQL is a 400, and its warning quotes nothing."""
    secret = "not-a-number: grace@example.com"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await analytics_pb2_grpc.AnalyticsServiceStub(channel).GetUserActivitySummary(
            analytics_pb2.GetUserActivitySummaryRequest(user_id=secret)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused.value).reason == "VALIDATION_ERROR"
    log = captured_logs.getvalue()
    assert "InvalidTextRepresentation" in log and "SQLSTATE 22P02" in log
    assert "grace" not in log and "SELECT" not in log
