"""The analytics service's gRPC servicers: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from kit import paging, telemetry
from kit.auth import current_caller
from kit.errors import FeatureNotInPlan, Forbidden, ValidationError
from kit.origin import client_origin
from kit.server import Registration, Runtime
from services.analytics import audit_log, metrics, usage_log
from services.analytics.audit_store import AuditStore
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import UsageRow, UsageStore
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc, resources_pb2

_ACTION_FILTER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class AnalyticsApi(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, runtime: Runtime, store: UsageStore, audit: AuditStore) -> None:
        settings = runtime.settings
        assert isinstance(settings, AnalyticsSettings)
        self.runtime, self.settings, self.store, self.audit = runtime, settings, store, audit
        self.client_actions = frozenset(settings.usage_client_actions)

    async def ListUsageRecords(
        self, request: analytics_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.ListUsageRecordsResponse:
        user_id = _whose_records(request.user_id)
        if request.action and not _ACTION_FILTER.match(request.action):
            raise ValidationError("action must be lower snake case, at most 64 characters", field="action")
        size = paging.page_size(request.page_size)
        rows = await self.store.list_records(
            user_id,
            limit=size + 1,
            action=request.action or None,
            since=request.since.ToDatetime(UTC) if request.HasField("since") else None,
            after=paging.decode_cursor(request.page_token),
        )
        page = paging.page_of(rows, size, paging.cursor_of)
        return analytics_pb2.ListUsageRecordsResponse(
            records=[_usage_record(row) for row in page.items], next_page_token=page.next_page_token
        )

    async def LogUserAction(
        self, request: analytics_pb2.LogUserActionRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.UsageRecord:
        caller = current_caller()
        s = self.settings
        origin = client_origin(context)
        entry = usage_log.UsageEntry(
            id=uuid.uuid4(),
            created_at=datetime.now(UTC),
            user_id=caller.user_id,
            action=usage_log.validate_client_action(request.action, self.client_actions),
            source=usage_log.CLIENT_SOURCE,
            metadata=usage_log.validate_client_metadata(
                json_format.MessageToDict(request.metadata), s.usage_metadata_max_bytes
            ),
            session_id=usage_log.validate_session_id(request.session_id),
            ip_address=origin.ip or None,
            user_agent=origin.user_agent[: s.usage_user_agent_max_length] or None,
            synthetic=telemetry.is_synthetic(),
        )
        async with self.runtime.db.transaction() as session:
            await self.store.record(session, [entry])
        return _usage_record(
            UsageRow(entry.id, entry.action, entry.metadata, entry.session_id, entry.created_at)
        )

    async def GetMetrics(
        self, request: analytics_pb2.GetMetricsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetMetricsResponse:
        window = self._window(request.window, self.settings.metrics_window_default)
        found = await self.store.generation_metrics(current_caller().user_id, window)
        return analytics_pb2.GetMetricsResponse(
            total_generations=found.total,
            completed_generations=found.completed,
            failed_generations=found.failed,
            success_rate=found.success_rate,
            avg_processing_time_ms=found.avg_processing_ms,
            p95_processing_time_ms=found.p95_processing_ms,
            tokens_used=found.tokens_used,
        )

    async def GetSystemAnalytics(
        self, request: analytics_pb2.GetSystemAnalyticsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetSystemAnalyticsResponse:
        return await self._analytics(
            request.window, user_id=None, include_synthetic=request.include_synthetic
        )

    async def GetAdvancedAnalytics(
        self, request: analytics_pb2.GetAdvancedAnalyticsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetSystemAnalyticsResponse:
        caller = current_caller()
        user_id = caller.user_id
        if not caller.is_admin and caller.plan not in self.settings.advanced_analytics_plans:
            raise FeatureNotInPlan(
                "Advanced analytics are part of the enterprise plan",
                details={"plan": caller.plan, "feature": "advanced_analytics"},
            )
        return await self._analytics(request.window, user_id=user_id)

    async def ListAuditEvents(
        self, request: analytics_pb2.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.ListAuditEventsResponse:
        audit_log.validate_filters(request.actor, request.action)
        size = paging.page_size(request.page_size)
        entries = await self.audit.list_events(
            limit=size + 1,
            actor=request.actor or None,
            action=request.action or None,
            since=request.since.ToDatetime(UTC) if request.HasField("since") else None,
            after=paging.decode_cursor(request.page_token),
        )
        page = paging.page_of(entries, size, paging.cursor_of)
        return analytics_pb2.ListAuditEventsResponse(
            events=[_audit_event(entry) for entry in page.items], next_page_token=page.next_page_token
        )

    async def GetUserActivitySummary(
        self, request: analytics_pb2.GetUserActivitySummaryRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.GetUserActivitySummaryResponse:
        if not request.user_id:
            raise ValidationError("user_id is required", field="user_id")
        if request.recent_limit < 0:
            raise ValidationError("recent_limit must not be negative", field="recent_limit")
        limit = min(
            request.recent_limit or self.settings.activity_recent_default, self.settings.activity_recent_max
        )
        recent, counts = await asyncio.gather(
            self.store.list_records(request.user_id, limit=limit), self.store.action_counts(request.user_id)
        )
        response = analytics_pb2.GetUserActivitySummaryResponse(
            recent_records=[_usage_record(row) for row in recent], action_counts=counts
        )
        if recent:
            response.last_active_at.FromDatetime(recent[0].created_at)
        return response

    async def _analytics(
        self, window_text: str, user_id: str | None, include_synthetic: bool = False
    ) -> analytics_pb2.GetSystemAnalyticsResponse:
        window = self._window(window_text, self.settings.system_window_default)
        top = self.settings.analytics_top_n
        if user_id is None:
            rows, networks = await asyncio.gather(
                self.store.grouped_counts(
                    window, metrics.SYSTEM_ACTIONS, include_synthetic=include_synthetic
                ),
                self.store.signup_networks(window, top, include_synthetic=include_synthetic),
            )
        else:  # a user's own analytics: where accounts come from is not theirs to see
            rows, networks = await self.store.grouped_counts(window, metrics.SYSTEM_ACTIONS, user_id), []
        found = metrics.system_analytics(window, rows, top)
        return analytics_pb2.GetSystemAnalyticsResponse(
            user_growth=[
                resources_pb2.UserGrowthPoint(day=p.day.isoformat(), new_users=p.new_users)
                for p in found.days
            ],
            generation_trends=[
                resources_pb2.GenerationTrendPoint(
                    day=p.day.isoformat(), started=p.started, completed=p.completed, failed=p.failed
                )
                for p in found.days
            ],
            token_usage=resources_pb2.TokenUsage(
                purchased=found.purchased, granted=found.granted, spent=found.spent, refunded=found.refunded
            ),
            error_rates=[
                resources_pb2.ErrorRate(reason=reason, count=count, rate=rate)
                for reason, count, rate in found.error_rates
            ],
            popular_models=[resources_pb2.ModelPopularity(model=m, count=c) for m, c in found.popular_models],
            popular_styles=[resources_pb2.StylePopularity(style=s, count=c) for s, c in found.popular_styles],
            top_signup_networks=[resources_pb2.SignupNetwork(network=n, count=c) for n, c in networks],
        )

    def _window(self, text: str, default: str) -> metrics.Window:
        return metrics.parse_window(
            text, datetime.now(UTC), default=default, max_days=self.settings.analytics_window_max_days
        )


def _whose_records(requested: str) -> str:
    """Empty: the caller. Another user: admins only (a service acting for a user is that user)."""
    caller = current_caller()
    if not requested or requested == caller.user_id:
        return caller.user_id
    if caller.is_admin:
        return requested
    raise Forbidden("You can only read your own usage")


def _usage_record(row: UsageRow) -> resources_pb2.UsageRecord:
    record = resources_pb2.UsageRecord(id=str(row.id), action=row.action, session_id=row.session_id or "")
    metadata = struct_pb2.Struct()
    metadata.update(row.metadata or {})
    record.metadata.CopyFrom(metadata)
    record.created_at.CopyFrom(_timestamp(row.created_at))
    return record


def _audit_event(entry: audit_log.AuditEntry) -> resources_pb2.AuditEvent:
    event = resources_pb2.AuditEvent(
        id=str(entry.id),
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        client_address=entry.client_address or "",
        user_agent=entry.user_agent or "",
        details=entry.shown_details,
    )
    event.created_at.CopyFrom(_timestamp(entry.created_at))
    return event


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def registrations(
    runtime: Runtime, store: UsageStore | None = None, audit: AuditStore | None = None
) -> Sequence[Registration]:
    return [
        Registration(
            AnalyticsApi(runtime, store or UsageStore(runtime.db), audit or AuditStore(runtime.db)),
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
        ),
    ]
