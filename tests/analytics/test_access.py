"""Who may read what, and bad input answered with a domain error that names the field."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text

from kit.origin import RELAY_CREDENTIAL_HEADER
from stylestudio.analytics.v1 import analytics_pb2
from tests.analytics.conftest import Analytics, bearer


def _field(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return info.reason, info.metadata.get("field", "")


async def test_a_user_cannot_read_another_users_usage(analytics: Analytics) -> None:
    _, token = analytics.token()
    other, _ = analytics.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().ListUsageRecords(
            analytics_pb2.ListUsageRecordsRequest(user_id=other), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_an_admin_may_read_a_users_usage(analytics: Analytics) -> None:
    user_id, token = analytics.token()
    await analytics.user_stub().LogUserAction(
        analytics_pb2.LogUserActionRequest(action="page_view"), metadata=bearer(token)
    )
    _, admin = analytics.token(role="admin")
    as_admin = await analytics.user_stub().ListUsageRecords(
        analytics_pb2.ListUsageRecordsRequest(user_id=user_id), metadata=bearer(admin)
    )
    assert [r.action for r in as_admin.records] == ["page_view"]


async def test_a_non_admin_is_refused_system_analytics(analytics: Analytics) -> None:
    _, token = analytics.token(plan="enterprise")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetSystemAnalytics(
            analytics_pb2.GetSystemAnalyticsRequest(), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _field(failure.value)[0] == "FORBIDDEN"


async def test_anonymous_callers_are_unauthenticated(analytics: Analytics) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetMetrics(analytics_pb2.GetMetricsRequest())
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _stored_origin(analytics: Analytics, record_id: str) -> tuple[str, str, str]:
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        row = (
            await session.execute(
                text("SELECT host(ip_address) AS ip, user_agent, source FROM usage_records WHERE id = :id"),
                {"id": record_id},
            )
        ).one()
    return row.ip, row.user_agent, row.source


FORWARDED_ORIGIN = (("x-forwarded-for", "203.0.113.7, 10.0.0.1"), ("x-forwarded-user-agent", "Mozilla/5.0"))


async def test_a_logged_action_is_stored_with_session_address_and_agent(analytics: Analytics) -> None:
    user_id, token = analytics.token()
    metadata = struct_pb2.Struct()
    metadata.update({"page": "/pricing", "email": "someone@example.com", "note": "from bob@example.org"})
    relayed = (RELAY_CREDENTIAL_HEADER, analytics.keyring.credentials("gateway").token())
    record = await analytics.user_stub().LogUserAction(
        analytics_pb2.LogUserActionRequest(action="page_view", metadata=metadata, session_id="web-1"),
        metadata=(*bearer(token), *FORWARDED_ORIGIN, relayed),
    )
    assert record.action == "page_view" and record.session_id == "web-1"
    assert dict(record.metadata) == {"page": "/pricing", "note": "from [redacted]"}
    ip, agent, source = await _stored_origin(analytics, record.id)
    assert ip == "203.0.113.7" and agent.startswith("Mozilla/5.0") and source == "client"
    assert user_id


@pytest.mark.parametrize("relay", ["none", "another-service", "acting-for-a-user", "garbage"])
async def test_a_direct_call_is_placed_at_its_peer_whatever_origin_it_claims(
    analytics: Analytics, relay: str
) -> None:
    """Only the gateway's own credential makes the forwarded address and agent believed: a user
    calling gRPC directly, or a service's credential in the gateway's place, is not the gateway."""
    _, token = analytics.token()
    keys = analytics.keyring
    relays = {
        "none": (),
        "another-service": ((RELAY_CREDENTIAL_HEADER, keys.credentials("generation").token()),),
        "acting-for-a-user": ((RELAY_CREDENTIAL_HEADER, keys.credentials("gateway").token("someone")),),
        "garbage": ((RELAY_CREDENTIAL_HEADER, "not-a-credential"),),
    }
    call = analytics.user_stub().LogUserAction(
        analytics_pb2.LogUserActionRequest(action="page_view"),
        metadata=(*bearer(token), *FORWARDED_ORIGIN, *relays[relay]),
    )
    if relay == "none":
        ip, agent, _ = await _stored_origin(analytics, (await call).id)
        assert (ip, agent) == ("127.0.0.1", None)  # the peer; grpc-python's own agent says nothing
    else:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (analytics_pb2.LogUserActionRequest(), "action"),
        (analytics_pb2.LogUserActionRequest(action="Page View"), "action"),
        (analytics_pb2.LogUserActionRequest(action="generation_completed"), "action"),
        (analytics_pb2.LogUserActionRequest(action="not_a_known_action"), "action"),
        (analytics_pb2.LogUserActionRequest(action="page_view", session_id="s" * 500), "session_id"),
    ],
)
async def test_bad_actions_are_validation_errors(
    analytics: Analytics, request_: analytics_pb2.LogUserActionRequest, field: str
) -> None:
    _, token = analytics.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().LogUserAction(request_, metadata=bearer(token))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _field(failure.value) == ("VALIDATION_ERROR", field)


async def test_oversized_metadata_is_refused(analytics: Analytics) -> None:
    _, token = analytics.token()
    metadata = struct_pb2.Struct()
    metadata.update({"blob": "x" * 5000})
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().LogUserAction(
            analytics_pb2.LogUserActionRequest(action="page_view", metadata=metadata), metadata=bearer(token)
        )
    assert _field(failure.value) == ("VALIDATION_ERROR", "metadata")


@pytest.mark.parametrize("window", ["7", "7w", "-1d", "0h", "99999d", "1.5d", "d7"])
async def test_malformed_windows_are_validation_errors(analytics: Analytics, window: str) -> None:
    _, token = analytics.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetMetrics(
            analytics_pb2.GetMetricsRequest(window=window), metadata=bearer(token)
        )
    assert _field(failure.value) == ("VALIDATION_ERROR", "window")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (analytics_pb2.ListUsageRecordsRequest(page_token="garbage!"), "pageToken"),
        (analytics_pb2.ListUsageRecordsRequest(page_token="eyJ0IjogMX0"), "pageToken"),
        (analytics_pb2.ListUsageRecordsRequest(page_size=-1), "pageSize"),
        (analytics_pb2.ListUsageRecordsRequest(action="DROP TABLE"), "action"),
    ],
)
async def test_bad_list_requests_are_validation_errors(
    analytics: Analytics, request_: analytics_pb2.ListUsageRecordsRequest, field: str
) -> None:
    _, token = analytics.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().ListUsageRecords(request_, metadata=bearer(token))
    assert _field(failure.value) == ("VALIDATION_ERROR", field)


async def test_the_activity_summary_is_for_services_only(analytics: Analytics) -> None:
    user_id, token = analytics.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetUserActivitySummary(
            analytics_pb2.GetUserActivitySummaryRequest(user_id=user_id), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await analytics.service_stub().GetUserActivitySummary(analytics_pb2.GetUserActivitySummaryRequest())
    assert _field(missing.value) == ("VALIDATION_ERROR", "user_id")


@pytest.mark.parametrize("plan", ["free", "basic", "pro"])
async def test_advanced_analytics_are_not_in_plans_below_enterprise(analytics: Analytics, plan: str) -> None:
    _, token = analytics.token(plan=plan)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetAdvancedAnalytics(
            analytics_pb2.GetAdvancedAnalyticsRequest(), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _field(failure.value)[0] == "FEATURE_NOT_IN_PLAN"


async def test_admins_and_enterprise_users_get_their_advanced_analytics(analytics: Analytics) -> None:
    for plan, role in (("free", "admin"), ("enterprise", "user")):
        _, token = analytics.token(plan=plan, role=role)
        response = await analytics.user_stub().GetAdvancedAnalytics(
            analytics_pb2.GetAdvancedAnalyticsRequest(window="2d"), metadata=bearer(token)
        )
        assert len(response.user_growth) == 3 and not response.popular_models  # nothing of theirs yet
    _, token = analytics.token(plan="enterprise")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await analytics.user_stub().GetAdvancedAnalytics(
            analytics_pb2.GetAdvancedAnalyticsRequest(window="7w"), metadata=bearer(token)
        )
    assert _field(failure.value) == ("VALIDATION_ERROR", "window")
