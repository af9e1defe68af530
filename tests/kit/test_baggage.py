"""W3C baggage: the synthetic mark of load-test traffic, read from a client's header, carried
in RPC metadata and event envelopes, and recorded by analytics (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kit import telemetry
from services.analytics import usage_log
from stylestudio.users.v1 import events_pb2 as users
from tests.analytics.events_factory import envelope


@pytest.mark.parametrize(
    "header",
    [
        "stylestudio.synthetic=true",
        " stylestudio.synthetic = true ;ttl=1",
        "team=a,stylestudio.synthetic=true",
    ],
)
def test_a_baggage_header_with_the_mark_is_synthetic(header: str) -> None:
    assert telemetry.baggage_is_synthetic(header)


@pytest.mark.parametrize(
    "header",
    ["", "stylestudio.synthetic=false", "stylestudio.synthetic=truee", "x" * 10_000, "=,=;,stylestudio"],
)
def test_a_baggage_header_without_the_mark_is_not(header: str) -> None:
    assert not telemetry.baggage_is_synthetic(header)


def test_the_mark_survives_a_hop_through_metadata_or_an_envelope() -> None:
    context = telemetry.extract_trace_context("", baggage=telemetry.SYNTHETIC_BAGGAGE)
    assert telemetry.is_synthetic(context)
    assert not telemetry.is_synthetic()
    with telemetry.attached(context):
        assert telemetry.is_synthetic()
        carried = telemetry.current_baggage()
    assert telemetry.baggage_is_synthetic(carried)
    assert telemetry.current_baggage() == ""


def test_an_event_with_the_mark_becomes_a_synthetic_usage_record() -> None:
    now = datetime.now(UTC)
    data = users.UserCreated(user_id="u-1", plan="free", signup_method="password")
    marked = envelope("user.created", data, "u-1")
    marked.baggage = telemetry.SYNTHETIC_BAGGAGE
    plain = envelope("user.created", data, "u-1")
    assert usage_log.entry_from_event(marked, now, timedelta(minutes=5)).synthetic
    assert not usage_log.entry_from_event(plain, now, timedelta(minutes=5)).synthetic
