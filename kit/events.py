"""Events: a transactional outbox relayed to Redis Streams, and idempotent consumers.

Writing: ``await outbox.add(session, "user.created", UserCreated(...), user_id=...)``
inside the transaction that changes state. The row commits or rolls back with it;
the ``OutboxRelay`` then moves committed rows to the stream ``<prefix>:<stream>``
(``events.<service>`` by default) and deletes them. Delivery is at-least-once.

Reading: an ``EventConsumer`` (one consumer group per consuming service) records
each event id in its schema's ``inbox`` in the same transaction as the handler's
writes, and acknowledges only after commit; a redelivered event finds its id in
the inbox and is acknowledged without running the handler again. Messages left
pending by a dead consumer are claimed by another after ``claim_idle_ms``; after
``max_deliveries`` attempts a message is moved to ``<stream>.dead``.

Every event carries the W3C trace context of the code that wrote it, and the
consumer's span is its child (PRODUCER/CONSUMER spans around every hop).

Batch mode, for high-volume consumers (analytics): ``consumer.on_batch(stream,
types, handler)`` hands every event of those types read in one XREADGROUP
(``batch_size`` of them at most) to ``async def handler(session, events)`` in ONE
transaction, records their ids in the inbox with one statement (or not at all with
``inbox=False``, when the handler's own writes are keyed by the event id), and
acknowledges them together after commit. If the batch fails, each of its events is
retried alone, so one poison event cannot hold back the others; it stays pending
and ends in the dead letters like any other. The batch's span links to every event's
trace instead of being the child of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa
from google.protobuf import message, timestamp_pb2
from google.protobuf.message import DecodeError
from opentelemetry import trace
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from kit import retry, telemetry
from kit.db import Database, after_commit
from kit.logs import describe_error
from kit.retry import Backoff
from stylestudio.common.v1 import event_pb2

log = logging.getLogger("stylestudio.events")
_events_tracer = trace.get_tracer("stylestudio.events")

Event = event_pb2.Event
Handler = Callable[[AsyncConnection, Event], Awaitable[None]]
BatchHandler = Callable[[AsyncConnection, Sequence[Event]], Awaitable[None]]
# A batch span links to at most this many producers (OpenTelemetry keeps 128 links by default).
_MAX_SPAN_LINKS = 128


def event_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox and inbox tables, added to a service's MetaData (created by its first migration)."""
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("stream", sa.Text, nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, primary_key=True),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
            index=True,
        ),
    )
    return outbox, inbox


def stream_key(prefix: str, stream: str) -> str:
    return f"{prefix}:{stream}"


class Outbox:
    """Adds events to the service's outbox inside the caller's transaction."""

    def __init__(self, service: str, table: sa.Table) -> None:
        self.service = service
        self.table = table
        self.default_stream = f"events.{service}"
        self._committed = asyncio.Event()
        self._insert = sa.insert(self.table)

    async def add(
        self,
        session: AsyncConnection,
        event_type: str,
        data: message.Message,
        *,
        user_id: str = "",
        stream: str | None = None,
        event_id: uuid.UUID | None = None,
    ) -> Event:
        """Write the event into the outbox inside ``session``'s transaction."""
        envelope, values = self.row(event_type, data, user_id=user_id, stream=stream, event_id=event_id)
        await session.execute(self._insert, values)
        # Wake the relay as soon as this transaction commits, instead of at its next poll.
        after_commit(session, self._committed.set)
        return envelope

    def row(
        self,
        event_type: str,
        data: message.Message,
        *,
        user_id: str = "",
        stream: str | None = None,
        event_id: uuid.UUID | None = None,
    ) -> tuple[Event, dict[str, Any]]:
        """The event's envelope and its outbox row (``event_id``, ``stream``, ``event_type``,
        ``payload``), for a statement that inserts it itself (see ``written``)."""
        event_id = event_id or uuid.uuid4()
        envelope = Event(id=str(event_id), type=event_type, source=self.service, user_id=user_id)
        envelope.occurred_at.CopyFrom(_now())
        envelope.data.Pack(data)
        destination = stream or self.default_stream
        attributes = {
            telemetry.ATTR_MESSAGING_SYSTEM: "redis",
            telemetry.ATTR_MESSAGING_DESTINATION: destination,
            telemetry.ATTR_MESSAGING_OPERATION: "publish",
            telemetry.ATTR_MESSAGING_MESSAGE_ID: envelope.id,
            telemetry.ATTR_EVENT_TYPE: event_type,
        }
        # The PRODUCER span only marks the hop: consumers continue the trace from it.
        span = _events_tracer.start_span(
            f"publish {event_type}", kind=trace.SpanKind.PRODUCER, attributes=attributes
        )
        for name, value in telemetry.traceparent_of(span):
            setattr(envelope, name, value)
        envelope.baggage = telemetry.current_baggage()
        span.end()
        values = {
            "event_id": event_id,
            "stream": destination,
            "event_type": event_type,
            "payload": envelope.SerializeToString(),
        }
        return envelope, values

    def written(self) -> None:
        """A statement that inserted a ``row()`` has committed: wake the relay."""
        self._committed.set()

    async def wait_for_commit(self, timeout: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and the relay would then outlive its service's shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._committed.wait()
        self._committed.clear()


class OutboxRelay:
    """Moves committed outbox rows to Redis Streams, oldest first, then deletes them."""

    def __init__(
        self,
        db: Database,
        redis: Redis,
        outbox: Outbox,
        *,
        prefix: str,
        batch_size: int = 256,
        poll_interval: float = 1.0,
        max_length: int = 1_000_000,
    ) -> None:
        self._db, self._redis, self._outbox = db, redis, outbox
        self._prefix, self._batch, self._poll, self._max_len = prefix, batch_size, poll_interval, max_length

    async def run(self) -> None:
        backoff = Backoff(retry.LOOP)
        while True:
            try:
                moved = await self.relay_once()
                backoff.reset()
            except (RedisError, sa.exc.SQLAlchemyError, OSError) as error:
                log.warning("outbox relay failed, retrying", extra={"error": describe_error(error)})
                await backoff.wait()
                continue
            if moved < self._batch:
                await self._outbox.wait_for_commit(self._poll)

    async def relay_once(self) -> int:
        table = self._outbox.table
        async with self._db.transaction() as session:
            rows = (
                await session.execute(
                    sa.select(
                        table.c.seq, table.c.stream, table.c.event_type, table.c.event_id, table.c.payload
                    )
                    .order_by(table.c.seq)
                    .limit(self._batch)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            async with self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(
                        stream_key(self._prefix, row.stream),
                        {"id": str(row.event_id), "type": row.event_type, "event": row.payload},
                        maxlen=self._max_len,
                        approximate=True,
                    )
                await pipe.execute()
            await session.execute(sa.delete(table).where(table.c.seq.in_([row.seq for row in rows])))
        return len(rows)


@dataclass(eq=False)  # hashed by identity: batches are grouped by route
class _BatchRoute:
    handler: BatchHandler
    inbox: bool


@dataclass
class _Subscription:
    stream: str
    handlers: dict[str, Handler] = field(default_factory=dict)
    batch_routes: dict[str, _BatchRoute] = field(default_factory=dict)
    without_inbox: set[str] = field(default_factory=set)


@dataclass
class _Delivery:
    key: str
    message_id: bytes
    event: Event
    route: _BatchRoute


class EventConsumer:
    """One consumer-group member reading one or more streams, handling each event once in effect."""

    def __init__(
        self,
        db: Database,
        redis: Redis,
        inbox: sa.Table,
        *,
        prefix: str,
        group: str,
        name: str | None = None,
        concurrency: int = 1,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 10,
        batch_size: int = 1,
    ) -> None:
        self._db, self._inbox = db, inbox
        # redis-py types stream replies as a union of every RESP shape; we read RESP2 replies.
        self._redis: Any = redis
        self._prefix, self._group = prefix, group
        self.name = name or f"{group}-{uuid.uuid4().hex[:8]}"
        self._concurrency = max(1, concurrency)
        # Messages asked for per read: batch handlers get up to this many events at once.
        self._read_count = max(self._concurrency, batch_size)
        self._block_ms, self._claim_idle_ms, self._max_deliveries = block_ms, claim_idle_ms, max_deliveries
        self._subscriptions: dict[str, _Subscription] = {}
        self._tracer = telemetry.tracer("stylestudio.events")

    def on(self, stream: str, event_type: str, handler: Handler, *, inbox: bool = True) -> None:
        """Handle ``event_type`` arriving on ``stream`` (e.g. "events.users", "user.created").

        ``inbox=False`` skips the inbox (and its transaction's connection) for handlers that are
        idempotent by themselves; their session takes a connection only if they use it.
        """
        key = stream_key(self._prefix, stream)
        subscription = self._subscriptions.setdefault(key, _Subscription(stream))
        subscription.handlers[event_type] = handler
        if not inbox:
            subscription.without_inbox.add(event_type)

    def on_batch(
        self, stream: str, event_types: Iterable[str], handler: BatchHandler, *, inbox: bool = True
    ) -> None:
        """Handle the ``event_types`` arriving on ``stream`` in batches, one transaction per batch.

        ``inbox=False`` skips the inbox: only for handlers whose writes are themselves
        idempotent by event id (e.g. ``INSERT ... ON CONFLICT DO NOTHING`` keyed by it).
        """
        key = stream_key(self._prefix, stream)
        subscription = self._subscriptions.setdefault(key, _Subscription(stream))
        for event_type in event_types:
            subscription.batch_routes[event_type] = _BatchRoute(handler, inbox)

    @property
    def streams(self) -> Mapping[str, _Subscription]:
        return self._subscriptions

    @property
    def group(self) -> str:
        return self._group

    async def ensure_groups(self) -> None:
        for key in self._subscriptions:
            try:
                await self._redis.xgroup_create(key, self._group, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def run(self) -> None:
        # Redis (or the database, for our own pending events) may be down when the service
        # starts: wait for them rather than end the consumer.
        backoff = Backoff(retry.LOOP)
        while True:
            try:
                await self.ensure_groups()
                # Our own pending messages first (a restart with the same name), then new ones.
                await self._drain_own_pending()
                break
            except (RedisError, OSError, sa.exc.SQLAlchemyError) as error:
                log.warning(
                    "event consumer cannot start yet, retrying", extra={"error": describe_error(error)}
                )
                await backoff.wait()
        await self._consume()

    async def _consume(self) -> None:
        claim_every = max(self._claim_idle_ms / 1000 / 2, 0.5)
        last_claim = 0.0
        loop = asyncio.get_running_loop()
        # A pipeline: up to ``concurrency`` jobs in flight, more read as soon as one ends, so a
        # slow job never holds back the others (reading N and waiting for all of them did).
        slots = asyncio.Semaphore(self._concurrency)
        in_flight: set[asyncio.Task[object]] = set()
        backoff = Backoff(retry.LOOP)
        try:
            while True:
                try:
                    if loop.time() - last_claim >= claim_every:
                        await self.claim_abandoned()
                        last_claim = loop.time()
                    await slots.acquire()  # at least one free slot before reading
                    free = self._free_slots(slots) + 1
                    slots.release()
                    response = await self._read(self._read_count if self._batched else free)
                    for job in self._jobs(response):
                        await slots.acquire()
                        task = asyncio.create_task(self._in_slot(slots, job))
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                    backoff.reset()
                except (RedisError, OSError, sa.exc.SQLAlchemyError) as error:
                    log.warning("event consumer lost redis, retrying", extra={"error": describe_error(error)})
                    await backoff.wait()
        finally:
            for task in in_flight:
                task.cancel()
            # Cancelled jobs stay unacknowledged: delivered again (own pending first on restart).
            await asyncio.gather(*in_flight, return_exceptions=True)

    @property
    def _batched(self) -> bool:
        return any(subscription.batch_routes for subscription in self._subscriptions.values())

    @staticmethod
    def _free_slots(slots: asyncio.Semaphore) -> int:
        return slots._value  # asyncio.Semaphore has no public counter

    @staticmethod
    async def _in_slot(slots: asyncio.Semaphore, job: Awaitable[object]) -> object:
        try:
            return await job
        except Exception:  # _handle/_handle_batched log their own failures; the message stays pending
            log.exception("event job failed")
            return 0
        finally:
            slots.release()

    async def _read(self, count: int, block_ms: int | None = None) -> list:  # type: ignore[type-arg]
        response = await self._redis.xreadgroup(
            self._group,
            self.name,
            {key: ">" for key in self._subscriptions},
            count=count,
            block=self._block_ms if block_ms is None else block_ms,
        )
        return response or []

    async def consume_once(self, block_ms: int | None = None) -> int:
        """Read once and handle what came, all of it before returning (tests, one-off drains)."""
        return await self._handle_batch(await self._read(self._read_count, block_ms))

    async def _drain_own_pending(self) -> None:
        while True:
            response = await self._redis.xreadgroup(
                self._group, self.name, {key: "0" for key in self._subscriptions}, count=self._read_count
            )
            if not any(messages for _, messages in response or []):
                return
            if await self._handle_batch(response) == 0:
                return

    async def claim_abandoned(self) -> int:
        """Take over messages another member read but did not acknowledge in time."""
        handled = 0
        for key in self._subscriptions:
            pending = await self._redis.xpending_range(
                key, self._group, min="-", max="+", count=100, idle=self._claim_idle_ms
            )
            for entry in pending:
                message_id = entry["message_id"]
                if entry["times_delivered"] >= self._max_deliveries:
                    await self._dead_letter(key, message_id)
                    continue
                claimed = await self._redis.xclaim(
                    key, self._group, self.name, self._claim_idle_ms, [message_id]
                )
                if claimed:
                    handled += await self._handle_batch([(key, claimed)])
        return handled

    async def _dead_letter(self, key: str, message_id: bytes) -> None:
        messages = await self._redis.xrange(key, min=message_id, max=message_id)
        for _, fields in messages:
            await self._redis.xadd(f"{key}.dead", fields)
        await self._redis.xack(key, self._group, message_id)
        log.error("event moved to dead letters", extra={"stream": key, "message_id": _text(message_id)})

    async def _handle_batch(self, response: list) -> int:  # type: ignore[type-arg]
        jobs = self._jobs(response)
        if not jobs:
            return 0
        results = await asyncio.gather(*jobs, return_exceptions=True)
        # A single event's job answers True/False, a batch's how many it acknowledged.
        return sum(int(result) for result in results if isinstance(result, int))

    def _jobs(self, response: list) -> list[Awaitable[bool | int]]:  # type: ignore[type-arg]
        """One job per event, plus one per read for the events of batch routes."""
        jobs: list[Awaitable[bool | int]] = []
        batched: list[_Delivery] = []
        for key, messages in response:
            for message_id, fields in messages:
                if not fields:  # a pending entry whose message was trimmed comes back empty
                    continue
                delivery = self._batch_delivery(_text(key), message_id, fields)
                if delivery is not None:
                    batched.append(delivery)
                else:
                    jobs.append(self._handle(_text(key), message_id, fields))
        if batched:
            jobs.append(self._handle_batched(batched))
        return jobs

    def _batch_delivery(self, key: str, message_id: bytes, fields: Mapping[bytes, bytes]) -> _Delivery | None:
        subscription = self._subscriptions[key]
        if not subscription.batch_routes:
            return None
        try:
            event = Event.FromString(fields[b"event"])
        except (KeyError, DecodeError):
            return None  # the one-by-one path reports it, and it ends in the dead letters
        route = subscription.batch_routes.get(event.type)
        return _Delivery(key, message_id, event, route) if route is not None else None

    async def _handle_batched(self, deliveries: list[_Delivery], *, alone: bool = False) -> int:
        """Handle a batch in one transaction; on failure, each event alone (returns how many were acked)."""
        links = [
            trace.Link(
                trace.get_current_span(
                    telemetry.extract_trace_context(d.event.traceparent)
                ).get_span_context()
            )
            for d in deliveries[:_MAX_SPAN_LINKS]
            if d.event.traceparent
        ]
        attributes: dict[str, str | int] = {
            telemetry.ATTR_MESSAGING_SYSTEM: "redis",
            telemetry.ATTR_MESSAGING_OPERATION: "process",
            telemetry.ATTR_MESSAGING_CONSUMER_GROUP: self._group,
            "messaging.batch.message_count": len(deliveries),
        }
        with self._tracer.start_as_current_span(
            "process batch", kind=trace.SpanKind.CONSUMER, attributes=attributes, links=links
        ) as span:
            try:
                await retry.retried(partial(self._run_batch, deliveries), retry.STEP, "process batch")
            except Exception as error:
                telemetry.record_error(span, error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
                if alone or retry.is_unavailable(error):  # one by one would not fare better
                    log.exception(
                        "event handler failed; it will be redelivered",
                        extra={"event_type": deliveries[0].event.type, "event_id": deliveries[0].event.id},
                    )
                    return 0
                log.warning(
                    "event batch failed; handling its events one by one", extra={"size": len(deliveries)}
                )
                return sum([await self._handle_batched([d], alone=True) for d in deliveries])
        by_stream: dict[str, list[bytes]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.key, []).append(delivery.message_id)
        for key, message_ids in by_stream.items():
            await self._redis.xack(key, self._group, *message_ids)
        return len(deliveries)

    async def _run_batch(self, deliveries: Sequence[_Delivery]) -> None:
        async with self._db.transaction() as session:
            for route, events in (await self._fresh_events(session, deliveries)).items():
                await route.handler(session, events)

    async def _fresh_events(
        self, session: AsyncConnection, deliveries: Sequence[_Delivery]
    ) -> dict[_BatchRoute, list[Event]]:
        """The batch's events not handled before (inbox) nor twice in this batch, by route."""
        unique: dict[str, _Delivery] = {}
        for delivery in deliveries:
            unique.setdefault(delivery.event.id, delivery)
        recorded = [d.event.id for d in unique.values() if d.route.inbox]
        fresh_ids: set[str] = set()
        if recorded:
            inserted = await session.execute(
                pg_insert(self._inbox)
                .values([{"consumer": self._group, "event_id": event_id} for event_id in recorded])
                .on_conflict_do_nothing()
                .returning(self._inbox.c.event_id)
            )
            fresh_ids = set(inserted.scalars())
        by_route: dict[_BatchRoute, list[Event]] = {}
        for delivery in unique.values():
            if not delivery.route.inbox or delivery.event.id in fresh_ids:
                by_route.setdefault(delivery.route, []).append(delivery.event)
        return by_route

    async def _handle(self, key: str, message_id: bytes, fields: Mapping[bytes, bytes]) -> bool:
        subscription = self._subscriptions[key]
        event = Event.FromString(fields[b"event"])
        handler = subscription.handlers.get(event.type)
        if handler is None:
            await self._redis.xack(key, self._group, message_id)
            return True
        parent = telemetry.extract_trace_context(event.traceparent, event.tracestate, event.baggage)
        attributes = {
            telemetry.ATTR_MESSAGING_SYSTEM: "redis",
            telemetry.ATTR_MESSAGING_DESTINATION: subscription.stream,
            telemetry.ATTR_MESSAGING_OPERATION: "process",
            telemetry.ATTR_MESSAGING_CONSUMER_GROUP: self._group,
            telemetry.ATTR_MESSAGING_MESSAGE_ID: event.id,
            telemetry.ATTR_EVENT_TYPE: event.type,
        }
        # The producer's context is the handler's (its baggage too), the CONSUMER span its child.
        with (
            telemetry.attached(parent),
            self._tracer.start_as_current_span(
                f"process {event.type}", kind=trace.SpanKind.CONSUMER, attributes=attributes
            ) as span,
        ):
            try:
                # A dependency down (the database, Redis, a service the handler calls) is waited
                # for here, bounded, instead of leaving the event to a claim after claim_idle_ms
                # and spending its deliveries towards the dead letters.
                await retry.retried(
                    partial(self._run_one, handler, event, event.type in subscription.without_inbox),
                    retry.STEP,
                    f"process {event.type}",
                )
            except Exception as error:
                telemetry.record_error(span, error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
                log.exception(
                    "event handler failed; it will be redelivered",
                    extra={"event_type": event.type, "event_id": event.id},
                )
                return False
        await self._redis.xack(key, self._group, message_id)
        return True

    async def _run_one(self, handler: Handler, event: Event, without_inbox: bool) -> None:
        async with self._db.transaction() as session:
            if without_inbox or await self._record_in_inbox(session, event.id):
                await handler(session, event)

    async def _record_in_inbox(self, session: AsyncConnection, event_id: str) -> bool:
        inserted = await session.execute(
            pg_insert(self._inbox)
            .values(consumer=self._group, event_id=event_id)
            .on_conflict_do_nothing()
            .returning(self._inbox.c.event_id)
        )
        return inserted.first() is not None


def unpack(event: Event, message_type: type[message.Message]) -> message.Message:
    data = message_type()
    if not event.data.Unpack(data):
        raise ValueError(
            f"event {event.id} of type {event.type} does not carry {message_type.DESCRIPTOR.full_name}"
        )
    return data


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
