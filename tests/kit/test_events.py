"""Outbox -> Redis Streams -> consumer group -> inbox: at-least-once delivery, once in effect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from redis.asyncio import Redis

from kit.clients import open_channel
from kit.events import Event, EventConsumer, stream_key, unpack
from kit.interceptors import Authenticator
from kit.server import RunningService
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from tests.harness import TestDatabase
from tests.harness.identities import Keyring
from tests.harness.streams import stream_entries
from tests.kit.note_service import NOTE_EVENT, notes, running_note_service

STREAM = "events.analytics"

spans = InMemorySpanExporter()


@pytest.fixture(scope="module")
async def note_service(kit_database: TestDatabase, redis_url: str) -> AsyncIterator[RunningService]:
    url = kit_database.service_urls["analytics"]
    async with running_note_service(url, redis_url, spans, consumer_block_ms=100) as service:
        yield service


@pytest.fixture
async def client(note_service: RunningService) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceStub]:
    runtime = note_service.runtime
    assert runtime is not None
    channel = open_channel(runtime.settings.analytics_addr, Keyring.development().credentials("operator"))
    yield analytics_pb2_grpc.AnalyticsServiceStub(channel)
    await channel.close()


def _consumer(service: RunningService, group: str, name: str, **options: object) -> EventConsumer:
    runtime = service.runtime
    assert runtime is not None
    return runtime.consumer(group=group, name=name, **options)  # type: ignore[arg-type]


async def _write_note(client: analytics_pb2_grpc.AnalyticsServiceStub, text: str) -> None:
    await client.GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest(user_id=text))


async def _stream_entries(service: RunningService) -> list[Event]:
    runtime = service.runtime
    assert runtime is not None
    key = stream_key(runtime.settings.redis_prefix, STREAM)
    return [Event.FromString(fields[b"event"]) for _, fields in await stream_entries(runtime.redis, key)]


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def test_an_event_written_with_a_state_change_reaches_a_consumer_group(note_service, client) -> None:
    seen: list[str] = []

    async def handle(session: object, event: Event) -> None:
        seen.append(unpack(event, wrappers_pb2.StringValue).value)  # type: ignore[attr-defined]

    consumer = _consumer(note_service, "delivery-test", "member-1")
    consumer.on(STREAM, NOTE_EVENT, handle)
    await consumer.ensure_groups()
    await _write_note(client, "hello")

    async def delivered() -> bool:
        await consumer.consume_once(block_ms=100)
        return "hello" in seen

    await _until(delivered)
    assert seen == ["hello"]


async def test_a_rolled_back_transaction_publishes_nothing(note_service, client) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await _write_note(client, "rollback")
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    await _write_note(client, "after-rollback")  # a marker: the relay has run past the failed call

    async def marker_published() -> bool:
        return any(
            unpack(e, wrappers_pb2.StringValue).value == "after-rollback"  # type: ignore[attr-defined]
            for e in await _stream_entries(note_service)
        )

    await _until(marker_published)
    texts = [unpack(e, wrappers_pb2.StringValue).value for e in await _stream_entries(note_service)]  # type: ignore[attr-defined]
    assert "rollback" not in texts
    runtime = note_service.runtime
    async with runtime.db.transaction() as session:  # type: ignore[union-attr]
        rows = (await session.execute(sa.select(notes.c.text).where(notes.c.text == "rollback"))).all()
    assert rows == []


async def test_a_redelivered_event_is_handled_once(note_service, client, monkeypatch) -> None:
    """Member 1 commits the handler's work but dies before XACK; member 2 claims the message."""
    handled: list[str] = []

    async def handle(session: object, event: Event) -> None:
        handled.append(event.id)

    first = _consumer(note_service, "redelivery-test", "member-1", claim_idle_ms=100)
    first.on(STREAM, NOTE_EVENT, handle)
    await first.ensure_groups()
    # Only events written from now on are new to this group.
    runtime = note_service.runtime
    key = stream_key(runtime.settings.redis_prefix, STREAM)  # type: ignore[union-attr]
    await runtime.redis.xgroup_setid(key, "redelivery-test", id="$")  # type: ignore[union-attr]
    await _write_note(client, "once")

    class Killed(Exception):
        pass

    async def die_before_ack(*args: object) -> None:
        raise Killed("the process died between COMMIT and XACK")

    isolated = Redis.from_url(runtime.settings.redis_url)  # type: ignore[union-attr]
    first._redis = isolated  # its own connection, so patching xack affects only member 1
    monkeypatch.setattr(isolated, "xack", die_before_ack)

    async def first_handled() -> bool:
        await first.consume_once(block_ms=100)
        return len(handled) == 1

    await _until(first_handled)
    pending = await runtime.redis.xpending(key, "redelivery-test")  # type: ignore[union-attr]
    assert pending["pending"] == 1, "member 1 never acknowledged"

    second = _consumer(note_service, "redelivery-test", "member-2", claim_idle_ms=100)
    second.on(STREAM, NOTE_EVENT, handle)
    await asyncio.sleep(0.15)

    async def claimed() -> bool:
        await second.claim_abandoned()
        return (await runtime.redis.xpending(key, "redelivery-test"))["pending"] == 0  # type: ignore[union-attr]

    await _until(claimed)
    assert len(handled) == 1, "the inbox must stop the second run of the handler"
    await isolated.aclose()


async def test_a_message_read_by_a_member_that_died_is_claimed_and_handled(note_service, client) -> None:
    handled: list[str] = []

    async def handle(session: object, event: Event) -> None:
        handled.append(unpack(event, wrappers_pb2.StringValue).value)  # type: ignore[attr-defined]

    runtime = note_service.runtime
    key = stream_key(runtime.settings.redis_prefix, STREAM)  # type: ignore[union-attr]
    survivor = _consumer(note_service, "crash-test", "survivor", claim_idle_ms=100)
    survivor.on(STREAM, NOTE_EVENT, handle)
    await survivor.ensure_groups()
    await runtime.redis.xgroup_setid(key, "crash-test", id="$")  # type: ignore[union-attr]
    await _write_note(client, "orphan")

    async def read_by_doomed_member() -> bool:
        response = await runtime.redis.xreadgroup("crash-test", "doomed", {key: ">"}, count=10, block=100)  # type: ignore[union-attr]
        return bool(response)

    await _until(read_by_doomed_member)  # read, then "killed": never handled, never acked
    await asyncio.sleep(0.15)

    async def claimed() -> bool:
        await survivor.claim_abandoned()
        return handled == ["orphan"]

    await _until(claimed)


async def test_the_consumer_span_continues_the_trace_of_the_rpc_that_wrote_the_event(
    note_service, client
) -> None:
    spans.clear()
    done = asyncio.Event()

    async def handle(session: object, event: Event) -> None:
        done.set()

    consumer = _consumer(note_service, "trace-test", "member-1")
    consumer.on(STREAM, NOTE_EVENT, handle)
    await consumer.ensure_groups()
    runtime = note_service.runtime
    key = stream_key(runtime.settings.redis_prefix, STREAM)  # type: ignore[union-attr]
    await runtime.redis.xgroup_setid(key, "trace-test", id="$")  # type: ignore[union-attr]
    await _write_note(client, "traced")

    async def consumed() -> bool:
        await consumer.consume_once(block_ms=100)
        return done.is_set()

    await _until(consumed)
    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    consumer_span = next(s for s in finished if s.name == f"process {NOTE_EVENT}")
    rpc_span = next(
        s
        for s in finished
        if s.kind.name == "SERVER"
        and s.name.endswith("GetUserActivitySummary")
        and s.context.trace_id == consumer_span.context.trace_id
    )
    assert consumer_span.parent is not None
    producer_span = by_id[consumer_span.parent.span_id]
    assert producer_span.kind.name == "PRODUCER"
    assert producer_span.parent is not None and producer_span.parent.span_id == rpc_span.context.span_id
    assert consumer_span.context.trace_id == rpc_span.context.trace_id


async def test_rpc_spans_follow_the_rpc_conventions(
    note_service: RunningService, client: analytics_pb2_grpc.AnalyticsServiceStub
) -> None:
    """The kit's own client and server spans: names, kinds, parents, rpc.* attributes, status."""
    runtime = note_service.runtime
    assert runtime is not None
    method = "/stylestudio.analytics.v1.AnalyticsService/GetUserActivitySummary"
    spans.clear()
    await _write_note(client, "spanned")
    anonymous = open_channel(runtime.settings.analytics_addr)  # no service credential
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await analytics_pb2_grpc.AnalyticsServiceStub(anonymous).GetUserActivitySummary(
            analytics_pb2.GetUserActivitySummaryRequest(user_id="nobody")
        )
    await anonymous.close()

    def rpc_spans(kind: str) -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.kind.name == kind and s.name == method]

    async def both_ended() -> bool:
        return len(rpc_spans("CLIENT")) == 2 and len(rpc_spans("SERVER")) == 2

    await _until(both_ended)
    answered, turned_away = sorted(rpc_spans("CLIENT"), key=lambda s: s.start_time or 0)
    assert dict(answered.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "stylestudio.analytics.v1.AnalyticsService",
        "rpc.method": "GetUserActivitySummary",
        "rpc.grpc.status_code": 0,
    }
    assert answered.status.status_code is StatusCode.UNSET
    assert turned_away.attributes is not None
    assert turned_away.attributes["rpc.grpc.status_code"] == refused.value.code().value[0]
    assert turned_away.status.status_code is StatusCode.ERROR  # a caller sees any non-OK as an error
    for client_span in (answered, turned_away):
        context = client_span.context
        assert context is not None and client_span.attributes is not None
        (server_span,) = [s for s in rpc_spans("SERVER") if s.parent and s.parent.span_id == context.span_id]
        assert server_span.context is not None and server_span.context.trace_id == context.trace_id
        assert server_span.attributes is not None
        code = client_span.attributes["rpc.grpc.status_code"]
        assert server_span.attributes["rpc.grpc.status_code"] == code
        # The refusal is the caller's doing: the server's span is not an error.
        assert server_span.status.status_code is StatusCode.UNSET


async def test_a_failing_credential_check_ends_as_internal_with_its_span_ended(
    note_service: RunningService, client: analytics_pb2_grpc.AnalyticsServiceStub, monkeypatch
) -> None:
    """A bug or outage inside the credential check (not a refusal) answers INTERNAL, says nothing
    of the cause, ends the call's span as an error and leaves the next call unaffected."""
    method = "/stylestudio.analytics.v1.AnalyticsService/GetUserActivitySummary"

    async def broken(self: Authenticator, *args: object) -> object:
        raise RuntimeError("verifier exploded: secret detail")

    spans.clear()
    with monkeypatch.context() as patched:
        patched.setattr(Authenticator, "caller_from", broken)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _write_note(client, "never")
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    assert "secret detail" not in (failed.value.details() or "")

    async def server_span_ended() -> bool:
        return any(s.kind.name == "SERVER" and s.name == method for s in spans.get_finished_spans())

    await _until(server_span_ended)
    (server_span,) = [s for s in spans.get_finished_spans() if s.kind.name == "SERVER" and s.name == method]
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert server_span.status.status_code is StatusCode.ERROR
    await _write_note(client, "after")  # the caller and trace context of the failed call were reset


async def test_a_handler_whose_dependency_is_down_is_retried_in_place_and_a_bug_is_not(
    note_service, client
) -> None:
    """An outage of a dependency (here: billing refusing, twice) is waited for by the consumer
    (kit.retry.STEP), so the event is handled and acknowledged without waiting for a claim
    and without spending its deliveries; a handler's bug stays pending at once."""
    from kit.errors import DependencyUnavailable

    calls: dict[str, int] = {}

    async def handle(session: object, event: Event) -> None:
        text = unpack(event, wrappers_pb2.StringValue).value  # type: ignore[attr-defined]
        calls[text] = calls.get(text, 0) + 1
        if text == "outage" and calls[text] <= 2:
            raise DependencyUnavailable("billing")
        if text == "bug":
            raise ZeroDivisionError("a bug")

    consumer = _consumer(note_service, "outage-test", "member-1")
    consumer.on(STREAM, NOTE_EVENT, handle)
    runtime = note_service.runtime
    key = stream_key(runtime.settings.redis_prefix, STREAM)  # type: ignore[union-attr]
    await consumer.ensure_groups()
    await runtime.redis.xgroup_setid(key, "outage-test", id="$")  # type: ignore[union-attr]
    await _write_note(client, "outage")
    await _write_note(client, "bug")

    async def both_seen() -> bool:
        await consumer.consume_once(block_ms=100)
        return "outage" in calls and "bug" in calls

    await _until(both_seen)
    assert calls == {"outage": 3, "bug": 1}
    pending = await runtime.redis.xpending(key, "outage-test")  # type: ignore[union-attr]
    assert pending["pending"] == 1  # the bug's event, left for a later delivery
