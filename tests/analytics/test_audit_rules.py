"""The audit log's rules without a database: an event as a row, filters, its page cursor, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kit import audit, paging
from kit.errors import ValidationError
from kit.events import Event, Outbox
from services.analytics import audit_log
from services.users import models as users_models
from stylestudio.common.v1.audit_pb2 import AuditRecorded

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)


def _event(data: AuditRecorded, occurred: datetime) -> Event:
    envelope, _ = Outbox("users", users_models.outbox).row(audit.AUDIT_RECORDED, data)
    envelope.occurred_at.FromDatetime(occurred)
    return envelope


def test_a_service_acting_for_a_user_is_shown_beside_the_user() -> None:
    data = AuditRecorded(
        action=audit.API_KEY_CREATED,
        actor_user_id="u-1",
        actor_service="operator",
        target="users/u-1/apiKeys/k-1",
        client_address="2001:db8::1",
        user_agent="cli",
        details={"a": "b"},
    )
    entry = audit_log.entry_from_event(_event(data, NOW), NOW, SKEW)
    assert (entry.actor, entry.acting_service, entry.source) == ("u-1", "operator", "users")
    assert entry.shown_details == {"a": "b", "actingService": "operator"}
    assert (entry.client_address, entry.user_agent, entry.created_at) == ("2001:db8::1", "cli", NOW)


def test_a_service_acting_for_itself_is_the_actor_and_odd_values_are_dropped() -> None:
    data = AuditRecorded(action=audit.SESSIONS_ENDED, actor_service="operator", client_address="not an ip")
    entry = audit_log.entry_from_event(_event(data, NOW + timedelta(days=3)), NOW, SKEW)
    assert (entry.actor, entry.acting_service, entry.shown_details) == ("operator", "", {})
    assert entry.client_address is None and entry.user_agent is None
    assert entry.created_at == NOW  # a clock far ahead: recorded at arrival


def test_filters_refuse_what_this_api_did_not_make() -> None:
    audit_log.validate_filters("0b6f9c1e-3f1d-4c55-9d6a-2b1f3c4d5e6f", "auth.login_failed")
    for actor, action in (("a b", ""), ("", "Auth.Failed"), ("", "x" * 65)):
        with pytest.raises(ValidationError):
            audit_log.validate_filters(actor, action)


def test_an_entry_is_a_page_cursor() -> None:
    """The list's page token is the kit's (tests/kit/test_paging.py refuses the forged ones)."""
    entry = audit_log.entry_from_event(_event(AuditRecorded(action="a.b"), NOW), NOW, SKEW)
    cursor = paging.decode_cursor(paging.encode_cursor(entry.created_at, entry.id))
    assert cursor == paging.Cursor(NOW, entry.id)


def test_retention_zero_keeps_everything() -> None:
    assert audit_log.retention_cutoff(NOW, 0) is None
    assert audit_log.retention_cutoff(NOW, 365) == NOW - timedelta(days=365)
