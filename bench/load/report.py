"""What a load run measured, and the files it leaves in ``--out``.

- ``report.json`` / ``report.txt``: requests/s overall, per route template (count, p50, p95,
  p99, errors), errors by status and reason (the API's error body), throttled answers
  (429/503 with Retry-After, retried), journeys completed and failed by kind.
- ``requests.jsonl``: every request answered with a 5xx or not answered at all
  (``{"t", "method", "route", "status", "reason", "error"}``, ``t`` when it was sent,
  status null without an answer), for the invariant checker (bench/soak/invariants).
- ``webhooks.jsonl``: every Stripe webhook sent (``{"t", "payload", "purchase_id"}``), for
  the fault injector to deliver again.

Plain Python (no Locust): the locustfile records into a ``LoadRecorder``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class RouteFigures:
    times_ms: list[float] = field(default_factory=list)
    errors: int = 0


class LoadRecorder:
    """Collects every request and journey of a run (thread/greenlet-safe) and writes the report."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], RouteFigures] = defaultdict(RouteFigures)
        self._errors: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()
        self._recovered = 0
        self._journeys: Counter[str] = Counter()
        self._failed_journeys: Counter[str] = Counter()
        self._refused_journeys: Counter[str] = Counter()
        self._failure_examples: dict[str, str] = {}
        self._started = time.time()
        self._ended: float | None = None
        self._requests_out: TextIO = (out_dir / "requests.jsonl").open("w", encoding="utf-8")
        self._webhooks_out: TextIO = (out_dir / "webhooks.jsonl").open("w", encoding="utf-8")

    # --- recording --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        route: str,
        status: int | None,
        elapsed_ms: float,
        reason: str = "",
        error: str = "",
        sent_at: float | None = None,
    ) -> None:
        """One attempt: ``status`` None when no answer came (timeout, connection error);
        ``sent_at`` (unix time, default now) is its ``t`` in requests.jsonl."""
        with self._lock:
            figures = self._routes[(method, route)]
            figures.times_ms.append(elapsed_ms)
            if status is None or status >= 400:
                figures.errors += 1
                answered = str(status) if status is not None else "no answer"
                self._errors[f"{answered} {reason or error}".strip()] += 1
            if status is None or status >= 500:
                line = {
                    "t": time.time() if sent_at is None else sent_at,
                    "method": method,
                    "route": route,
                    "status": status,
                    "reason": reason,
                    "error": error,
                }
                self._requests_out.write(json.dumps(line) + "\n")
                self._requests_out.flush()

    def throttled(self, status: int, recovered: bool) -> None:
        """A 409/429/503 with Retry-After that was waited for and retried (``recovered``: then answered)."""
        with self._lock:
            self._throttled[str(status)] += 1
            self._recovered += int(recovered)

    def journey(self, kind: str, completed: bool, why: str = "", refused: bool = False) -> None:
        """A journey's end: completed, refused by a business rule (out of tokens, plan limit;
        the platform answered correctly), or failed (``why``: the first failure of its kind)."""
        with self._lock:
            if completed:
                self._journeys[kind] += 1
            elif refused:
                self._refused_journeys[f"{kind}: {why}"] += 1
            else:
                self._failed_journeys[kind] += 1
                self._failure_examples.setdefault(kind, why[:300])

    def webhook(self, payload: str, purchase_id: str) -> None:
        with self._lock:
            line = {"t": time.time(), "payload": payload, "purchase_id": purchase_id}
            self._webhooks_out.write(json.dumps(line) + "\n")
            self._webhooks_out.flush()

    # --- the report -------------------------------------------------------------------------

    def summary(self, users: int | None = None) -> dict[str, Any]:
        with self._lock:
            ended = self._ended or time.time()
            seconds = max(ended - self._started, 1e-9)
            routes = []
            total = 0
            for (method, route), figures in sorted(self._routes.items(), key=lambda item: item[0][::-1]):
                times = sorted(figures.times_ms)
                total += len(times)
                routes.append(
                    {
                        "method": method,
                        "route": route,
                        "count": len(times),
                        "rps": round(len(times) / seconds, 2),
                        "p50_ms": round(percentile(times, 0.50), 1),
                        "p95_ms": round(percentile(times, 0.95), 1),
                        "p99_ms": round(percentile(times, 0.99), 1),
                        "errors": figures.errors,
                    }
                )
            server_errors = sum(
                n for key, n in self._errors.items() if key.split(" ", 1)[0].isdigit() and int(key[:3]) >= 500
            )
            return {
                "users": users,
                "duration_seconds": round(seconds, 1),
                "requests": total,
                "rps": round(total / seconds, 2),
                "server_errors": server_errors,
                "unanswered": sum(n for key, n in self._errors.items() if key.startswith("no answer")),
                "routes": routes,
                "errors": dict(self._errors.most_common()),
                "throttled": {"retried": dict(self._throttled), "recovered": self._recovered},
                "journeys": {
                    "completed": dict(sorted(self._journeys.items())),
                    "refused": dict(sorted(self._refused_journeys.items())),
                    "failed": dict(sorted(self._failed_journeys.items())),
                    "failure_examples": dict(sorted(self._failure_examples.items())),
                },
            }

    def write(self, users: int | None = None) -> dict[str, Any]:
        """Close the logs and write report.json and report.txt; returns the summary."""
        with self._lock:
            self._ended = self._ended or time.time()
            self._requests_out.close()
            self._webhooks_out.close()
        summary = self.summary(users)
        (self.out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (self.out_dir / "report.txt").write_text(readable(summary), encoding="utf-8")
        return summary


def readable(summary: dict[str, Any]) -> str:
    lines = [
        f"users {summary['users']}, {summary['duration_seconds']} s, {summary['requests']} requests, "
        f"{summary['rps']} requests/s, 5xx {summary['server_errors']}, unanswered {summary['unanswered']}",
        "",
        f"{'method':<7}{'route':<44}{'count':>7}{'rps':>8}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}",
    ]
    for r in summary["routes"]:
        lines.append(
            f"{r['method']:<7}{r['route']:<44}{r['count']:>7}{r['rps']:>8}"
            f"{r['p50_ms']:>9}{r['p95_ms']:>9}{r['p99_ms']:>9}{r['errors']:>8}"
        )
    lines += ["", "errors by status and reason:"]
    lines += [f"  {key}: {n}" for key, n in summary["errors"].items()] or ["  none"]
    throttled = summary["throttled"]
    retried = throttled["retried"] or "none"
    lines += ["", f"throttled and retried: {retried}, then answered {throttled['recovered']}"]
    journeys = summary["journeys"]
    lines += ["", "journeys completed:"]
    lines += [f"  {kind}: {n}" for kind, n in journeys["completed"].items()] or ["  none"]
    if journeys["refused"]:
        lines += ["journeys refused by a business rule:"]
        lines += [f"  {kind}: {n}" for kind, n in journeys["refused"].items()]
    if journeys["failed"]:
        lines += ["journeys failed:"]
        lines += [
            f"  {kind}: {n} (e.g. {journeys['failure_examples'].get(kind, '')})"
            for kind, n in journeys["failed"].items()
        ]
    return "\n".join(lines) + "\n"
