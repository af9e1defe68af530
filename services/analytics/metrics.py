"""Windows and the shape of the numbers: what "7d" covers, which days a chart shows, and
how the database's grouped counts become the metrics and system analytics.

Counting happens in SQL (store.py); this turns a few grouped rows into answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from kit.errors import ValidationError, excerpt
from services.analytics import usage_log

_WINDOW = re.compile(r"^(\d{1,5})([hd])$")


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    @property
    def days(self) -> list[date]:
        """Every UTC day the window touches, oldest first."""
        first, last = self.since.date(), self.until.date()
        return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


@dataclass(frozen=True)
class WindowParts:
    """A window cut where the daily rollup can answer: ``[since, days_from)`` and
    ``[days_until, end)`` from the records, the whole UTC days ``[first_day, end_day)``
    from the rollup. Half-open throughout (``end`` is just after ``until``)."""

    since: datetime
    days_from: datetime
    days_until: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return self.days_from.date()

    @property
    def end_day(self) -> date:
        return self.days_until.date()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def window_parts(window: Window) -> WindowParts:
    since = window.since.astimezone(UTC)
    # ``until`` is included (created_at <= until): the half-open end is the next microsecond.
    end = window.until.astimezone(UTC) + timedelta(microseconds=1)
    first = _midnight(since.date())
    first = first if first == since else first + timedelta(days=1)
    last = _midnight(end.date())
    if first >= last:  # no whole day inside: the records answer it all
        return WindowParts(since, end, end, end)
    return WindowParts(since, first, last, end)


def parse_window(text: str, now: datetime, *, default: str, max_days: int) -> Window:
    """ "24h" or "7d" (a number and a unit), ending now."""
    text = (text or default).strip()
    match = _WINDOW.match(text)
    if match is None:
        raise ValidationError(
            f"window must be a number and a unit, h or d (e.g. 24h, 7d); got {excerpt(text)!r}",
            field="window",
        )
    amount, unit = int(match.group(1)), match.group(2)
    length = timedelta(hours=amount) if unit == "h" else timedelta(days=amount)
    if amount == 0 or length > timedelta(days=max_days):
        raise ValidationError(f"window must be more than 0 and at most {max_days}d", field="window")
    return Window(since=now - length, until=now)


def success_rate(completed: int, failed: int) -> float:
    """completed / finished; 0 when nothing finished."""
    finished = completed + failed
    return completed / finished if finished else 0.0


@dataclass
class GenerationMetrics:
    total: int = 0
    completed: int = 0
    failed: int = 0
    avg_processing_ms: float = 0.0
    p95_processing_ms: float = 0.0
    tokens_used: int = 0

    @property
    def success_rate(self) -> float:
        return success_rate(self.completed, self.failed)


@dataclass(frozen=True)
class GroupedCount:
    """One row of the system-analytics query: a count (and token sum) for one grouping.

    Exactly one of ``day``, ``model``, ``style``, ``reason`` is set, or none for the
    action's total.
    """

    action: str
    count: int
    tokens: int
    day: date | None = None
    model: str | None = None
    style: str | None = None
    reason: str | None = None


@dataclass
class DayPoint:
    day: date
    new_users: int = 0
    started: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class SystemAnalytics:
    days: list[DayPoint]
    purchased: int = 0
    granted: int = 0
    spent: int = 0
    refunded: int = 0
    # (reason, count, rate), most frequent first
    error_rates: list[tuple[str, int, float]] = field(default_factory=list)
    popular_models: list[tuple[str, int]] = field(default_factory=list)
    popular_styles: list[tuple[str, int]] = field(default_factory=list)


_DAY_FIELD = {
    usage_log.SIGNUP: "new_users",
    usage_log.GENERATION_STARTED: "started",
    usage_log.GENERATION_COMPLETED: "completed",
    usage_log.GENERATION_FAILED: "failed",
}
_TOKEN_FIELD = {
    usage_log.TOKEN_PURCHASE: "purchased",
    usage_log.TOKENS_GRANTED: "granted",
    usage_log.GENERATION_COMPLETED: "spent",
    usage_log.TOKENS_REFUNDED: "refunded",
}
SYSTEM_ACTIONS = tuple(sorted(set(_DAY_FIELD) | set(_TOKEN_FIELD)))


def _ranked(counts: dict[str, int], top: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]


def system_analytics(window: Window, rows: Iterable[GroupedCount], top: int) -> SystemAnalytics:
    days = {day: DayPoint(day) for day in window.days}
    result = SystemAnalytics(days=list(days.values()))
    totals: dict[str, int] = {}
    reasons: dict[str, int] = {}
    models: dict[str, int] = {}
    styles: dict[str, int] = {}
    for row in rows:
        if row.day is not None:
            point = days.get(row.day)
            if point is not None and row.action in _DAY_FIELD:
                setattr(point, _DAY_FIELD[row.action], row.count)
        elif row.reason is not None:
            if row.action == usage_log.GENERATION_FAILED:
                reasons[row.reason] = row.count
        elif row.model is not None:
            if row.action == usage_log.GENERATION_STARTED:
                models[row.model] = row.count
        elif row.style is not None:
            if row.action == usage_log.GENERATION_STARTED:
                styles[row.style] = row.count
        else:
            totals[row.action] = row.count
            if row.action in _TOKEN_FIELD:
                setattr(result, _TOKEN_FIELD[row.action], row.tokens)
    finished = totals.get(usage_log.GENERATION_COMPLETED, 0) + totals.get(usage_log.GENERATION_FAILED, 0)
    result.error_rates = [
        (reason, count, count / finished if finished else 0.0) for reason, count in _ranked(reasons, top)
    ]
    result.popular_models = _ranked(models, top)
    result.popular_styles = _ranked(styles, top)
    return result
