"""A tiny service built from the kit for the kit's own tests.

It serves the analytics contract's internal ``GetUserActivitySummary`` RPC and,
in its handler, changes state (a row in ``kit_notes``) and writes an event in the
same transaction, or sleeps (``NOTE_SERVICE_DELAY``) to be an in-flight RPC, or
fails after writing (``user_id == "rollback"``), or runs a statement the database refuses
quoting the text (``user_id`` starting with ``"not-a-number:"``: a value it cannot read;
``"duplicate:"``: the same text twice under a unique constraint). Run as a process with
``python -m tests.kit.note_service`` (SIGTERM test) or in-process.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from google.protobuf import wrappers_pb2
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter

from kit import telemetry
from kit.server import Registration, RunningService, Runtime, ServiceDefinition, run
from services.analytics import models
from services.analytics.settings import AnalyticsSettings
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc

NOTE_EVENT = "kit.note_written"
notes = sa.Table(
    "kit_notes",
    models.metadata,
    sa.Column("id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
)


class NoteApi(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.delay = float(os.environ.get("NOTE_SERVICE_DELAY", "0"))

    async def GetUserActivitySummary(
        self, request: analytics_pb2.GetUserActivitySummaryRequest, context: object
    ) -> analytics_pb2.GetUserActivitySummaryResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        async with self.runtime.db.transaction() as session:
            await session.execute(sa.insert(notes).values(text=request.user_id))
            if request.user_id.startswith("not-a-number:"):
                # PostgreSQL quotes the value it cannot read; SQLAlchemy adds the statement.
                await session.execute(sa.select(sa.cast(sa.literal(request.user_id), sa.Integer)))
            if request.user_id.startswith("duplicate:"):
                # A bug, not the caller's doing: the DETAIL line quotes the duplicated text.
                create = "CREATE TEMP TABLE kit_unique_notes (text text UNIQUE) ON COMMIT DROP"
                await session.execute(sa.text(create))
                for _ in range(2):
                    insert = sa.text("INSERT INTO kit_unique_notes (text) VALUES (:text)")
                    await session.execute(insert, {"text": request.user_id})
            await self.runtime.outbox.add(
                session, NOTE_EVENT, wrappers_pb2.StringValue(value=request.user_id), user_id=request.user_id
            )
            if request.user_id == "rollback":
                raise RuntimeError("the handler failed after writing: nothing may be published")
        return analytics_pb2.GetUserActivitySummaryResponse(action_counts={"notes": 1})


def registrations(runtime: Runtime) -> Sequence[Registration]:
    return [
        Registration(
            NoteApi(runtime),
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
        )
    ]


def definition(settings: AnalyticsSettings | None = None) -> ServiceDefinition:
    return ServiceDefinition(
        name="analytics",
        settings=settings or AnalyticsSettings(),
        metadata=models.metadata,
        register=registrations,
    )


async def create_notes_table(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: notes.create(sync, checkfirst=True))
    await engine.dispose()


@asynccontextmanager
async def running_note_service(
    url: str, redis_url: str, spans: SpanExporter, **settings: Any
) -> AsyncIterator[RunningService]:
    """The note service in this process on the analytics schema at ``url``, on a free port and a
    Redis prefix of its own, its spans exported to ``spans``; ``settings``: more of its settings."""
    await create_notes_table(url)
    options: dict[str, Any] = {
        "analytics_addr": f"127.0.0.1:{_free_port()}",
        "service_database_url": url,
        "redis_url": redis_url,
        "redis_prefix": f"sstest-notes-{uuid.uuid4().hex[:8]}",
        "migrate_on_start": False,
    }
    service_settings = AnalyticsSettings(**(options | settings))
    telemetry.setup_telemetry("kit-tests", service_settings).add_span_processor(SimpleSpanProcessor(spans))
    service = RunningService(definition(service_settings))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def _free_port() -> int:
    from tests.harness import free_port  # not when run as a process: the harness is the tests'

    return free_port()


if __name__ == "__main__":
    run(definition())
