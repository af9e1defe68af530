"""Metrics and system analytics on a seeded usage log match numbers computed here, independently."""

from __future__ import annotations

import random
import statistics
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.analytics.usage_log import UsageEntry
from stylestudio.analytics.v1 import analytics_pb2
from tests.analytics.conftest import Analytics, bearer

NOW = datetime.now(UTC)
MODELS = ["stable-diffusion-xl", "dall-e-3", "midjourney"]
STYLES = ["realistic", "studio", "editorial"]
REASONS = ["PROVIDER_UNAVAILABLE", "PROCESSING_ERROR"]
# Where sign-ups came from (networks, as the users service publishes them); "" for a sign-up
# recorded before sign-ups carried one.
NETWORKS = [f"198.51.{n}.0/24" for n in range(14)] + ["2001:db8:7::/48", "203.0.113.0/24", ""]
# The windows the tests ask for start there (from now); no record is seeded that close to them.
_WINDOW_EDGES = [timedelta(hours=36), timedelta(days=7), timedelta(days=14)]
_MARGIN = timedelta(minutes=10)


def _entry(user_id: str, action: str, at: datetime, **facts: object) -> UsageEntry:
    return UsageEntry(id=uuid.uuid4(), created_at=at, user_id=user_id, action=action, source="test", **facts)  # type: ignore[arg-type]


def _seed_entries(rng: random.Random, users: list[str]) -> list[UsageEntry]:
    """Two weeks of activity, none of it in the last two hours (so a 1h window is empty)."""
    entries = []
    for _ in range(600):
        user = rng.choice(users)
        at = NOW - timedelta(hours=2) - timedelta(seconds=rng.randint(0, 14 * 86400))
        if any(abs(at - (NOW - edge)) < _MARGIN for edge in _WINDOW_EDGES):
            at -= 2 * _MARGIN  # the service's clock runs on while the tests run: no record on an edge
        kind = rng.random()
        model, style = rng.choice(MODELS), rng.choice(STYLES)
        if kind < 0.3:
            entries.append(_entry(user, "generation_started", at, model=model, style=style))
        elif kind < 0.5:
            entries.append(
                _entry(
                    user,
                    "generation_completed",
                    at,
                    model=model,
                    style=style,
                    tokens=rng.randint(1, 4),
                    processing_ms=rng.randint(200, 9000),
                )
            )
        elif kind < 0.6:
            entries.append(
                _entry(
                    user, "generation_failed", at, model=model, reason=rng.choice(REASONS), processing_ms=0
                )
            )
        elif kind < 0.7:
            network = rng.choice(NETWORKS[:-2] + NETWORKS[-2:] * 4)  # a few networks stand out
            metadata = {"signupNetwork": network} if network else {}
            entries.append(_entry(user, "signup", at, metadata=metadata))
        elif kind < 0.8:
            entries.append(_entry(user, "token_purchase", at, tokens=rng.choice([10, 50, 200])))
        elif kind < 0.9:
            entries.append(_entry(user, "tokens_granted", at, tokens=10))
        else:
            entries.append(_entry(user, "tokens_refunded", at, tokens=rng.randint(1, 10)))
    return entries


@pytest.fixture(scope="module")
async def seeded(analytics: Analytics) -> list[UsageEntry]:
    global NOW
    NOW = datetime.now(UTC)
    rng = random.Random(8)
    users = [str(uuid.uuid4()) for _ in range(5)]
    entries = _seed_entries(rng, users)
    async with analytics.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        await analytics.store.record(session, entries)
    return entries


def _p95(values: list[int]) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=20, method="inclusive")[18]  # linear, like percentile_cont


async def test_a_users_metrics_over_a_window_match_an_independent_count(
    analytics: Analytics, seeded: list[UsageEntry]
) -> None:
    user_id = seeded[0].user_id
    _, token = analytics.token(user_id)
    response = await analytics.user_stub().GetMetrics(
        analytics_pb2.GetMetricsRequest(window="7d"), metadata=bearer(token)
    )
    since = NOW - timedelta(days=7)
    mine = [e for e in seeded if e.user_id == user_id and e.created_at >= since]
    completed = [e for e in mine if e.action == "generation_completed"]
    failed = [e for e in mine if e.action == "generation_failed"]
    assert response.total_generations == sum(e.action == "generation_started" for e in mine)
    assert response.completed_generations == len(completed)
    assert response.failed_generations == len(failed)
    assert response.success_rate == pytest.approx(len(completed) / (len(completed) + len(failed)))
    times = [e.processing_ms for e in completed]
    assert response.avg_processing_time_ms == pytest.approx(statistics.fmean(times))  # type: ignore[arg-type]
    assert response.p95_processing_time_ms == pytest.approx(_p95(times))  # type: ignore[arg-type]
    assert response.tokens_used == sum(e.tokens for e in completed)  # type: ignore[misc]


async def test_metrics_of_an_empty_window_are_zero(analytics: Analytics, seeded: list[UsageEntry]) -> None:
    _, token = analytics.token(seeded[0].user_id)
    response = await analytics.user_stub().GetMetrics(
        analytics_pb2.GetMetricsRequest(window="1h"), metadata=bearer(token)
    )
    assert response == analytics_pb2.GetMetricsResponse()


async def test_system_analytics_match_an_independent_count(
    analytics: Analytics, seeded: list[UsageEntry]
) -> None:
    _, token = analytics.token(role="admin")
    response = await analytics.user_stub().GetSystemAnalytics(
        analytics_pb2.GetSystemAnalyticsRequest(window="7d"), metadata=bearer(token)
    )
    _assert_analytics_match(response, seeded, NOW - timedelta(days=7), system=True)


@pytest.mark.parametrize("window", ["7d", "36h", "14d"])
async def test_an_enterprise_users_advanced_analytics_count_only_their_records(
    analytics: Analytics, seeded: list[UsageEntry], window: str
) -> None:
    user_id = seeded[1].user_id
    _, token = analytics.token(user_id, plan="enterprise")
    response = await analytics.user_stub().GetAdvancedAnalytics(
        analytics_pb2.GetAdvancedAnalyticsRequest(window=window), metadata=bearer(token)
    )
    amount, unit = int(window[:-1]), window[-1]
    length = timedelta(hours=amount) if unit == "h" else timedelta(days=amount)
    _assert_analytics_match(response, [e for e in seeded if e.user_id == user_id], NOW - length)


@pytest.mark.parametrize("window", ["36h", "14d", "30d"])
async def test_system_analytics_over_other_windows_match_an_independent_count(
    analytics: Analytics, seeded: list[UsageEntry], window: str
) -> None:
    """Windows cut days at any hour: whole days come from the rollup, the edges from the records."""
    _, token = analytics.token(role="admin")
    response = await analytics.user_stub().GetSystemAnalytics(
        analytics_pb2.GetSystemAnalyticsRequest(window=window), metadata=bearer(token)
    )
    amount, unit = int(window[:-1]), window[-1]
    length = timedelta(hours=amount) if unit == "h" else timedelta(days=amount)
    _assert_analytics_match(response, seeded, NOW - length, system=True)


def _assert_analytics_match(
    response: analytics_pb2.GetSystemAnalyticsResponse,
    entries: list[UsageEntry],
    since: datetime,
    *,
    system: bool = False,
) -> None:
    window = [e for e in entries if e.created_at >= since]
    days = [
        (since.date() + timedelta(days=n)).isoformat() for n in range((NOW.date() - since.date()).days + 1)
    ]

    def per_day(action: str) -> list[int]:
        counts = Counter(e.created_at.date().isoformat() for e in window if e.action == action)
        return [counts[day] for day in days]

    assert [p.day for p in response.user_growth] == days
    assert [p.new_users for p in response.user_growth] == per_day("signup")
    assert [p.day for p in response.generation_trends] == days
    assert [p.started for p in response.generation_trends] == per_day("generation_started")
    assert [p.completed for p in response.generation_trends] == per_day("generation_completed")
    assert [p.failed for p in response.generation_trends] == per_day("generation_failed")

    def tokens(action: str) -> int:
        return sum(e.tokens or 0 for e in window if e.action == action)

    usage = response.token_usage
    assert (usage.purchased, usage.granted, usage.spent, usage.refunded) == (
        tokens("token_purchase"),
        tokens("tokens_granted"),
        tokens("generation_completed"),
        tokens("tokens_refunded"),
    )
    finished = sum(e.action in ("generation_completed", "generation_failed") for e in window)
    reasons = Counter(e.reason for e in window if e.action == "generation_failed")
    expected_errors = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    assert [(r.reason, r.count) for r in response.error_rates] == expected_errors
    for rate in response.error_rates:
        assert rate.rate == pytest.approx(rate.count / finished)
    models = Counter(e.model for e in window if e.action == "generation_started")
    styles = Counter(e.style for e in window if e.action == "generation_started")
    assert [(m.model, m.count) for m in response.popular_models] == sorted(
        models.items(), key=lambda item: (-item[1], item[0])
    )
    assert [(s.style, s.count) for s in response.popular_styles] == sorted(
        styles.items(), key=lambda item: (-item[1], item[0])
    )
    # The networks most sign-ups came from, the top ten (analytics_top_n): for admins only.
    networks = Counter(
        e.metadata["signupNetwork"] for e in window if e.action == "signup" and "signupNetwork" in e.metadata
    )
    expected_networks = sorted(networks.items(), key=lambda item: (-item[1], item[0]))[:10] if system else []
    assert [(n.network, n.count) for n in response.top_signup_networks] == expected_networks


async def test_system_analytics_of_an_empty_window_have_zero_days(
    analytics: Analytics, seeded: list[UsageEntry]
) -> None:
    _, token = analytics.token(role="admin")
    response = await analytics.user_stub().GetSystemAnalytics(
        analytics_pb2.GetSystemAnalyticsRequest(window="1h"), metadata=bearer(token)
    )
    assert response.user_growth and all(p.new_users == 0 for p in response.user_growth)
    assert all(p.started == p.completed == p.failed == 0 for p in response.generation_trends)
    assert response.token_usage == analytics_pb2.GetSystemAnalyticsResponse().token_usage
    assert not response.error_rates and not response.popular_models and not response.popular_styles
    assert not response.top_signup_networks


async def test_the_dashboard_summary_counts_a_users_whole_history(
    analytics: Analytics, seeded: list[UsageEntry]
) -> None:
    user_id = seeded[0].user_id
    response = await analytics.service_stub().GetUserActivitySummary(
        analytics_pb2.GetUserActivitySummaryRequest(user_id=user_id, recent_limit=3)
    )
    mine = sorted((e for e in seeded if e.user_id == user_id), key=lambda e: e.created_at, reverse=True)
    assert dict(response.action_counts) == dict(Counter(e.action for e in mine))
    assert [r.id for r in response.recent_records] == [str(e.id) for e in mine[:3]]
    assert response.last_active_at.ToDatetime(UTC) == mine[0].created_at.replace(
        microsecond=mine[0].created_at.microsecond
    )
