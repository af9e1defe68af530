"""The load's failed requests against the faults' windows: no 5xx but a 503 while a
dependency was down, and no request left without an answer.

``requests.jsonl`` (bench/load): one line per failed request, ``{"t": unix time, "method",
"route", "status": int or null (no answer: refused, reset, timed out), "reason", "error"}``.
``faults.jsonl`` (bench/soak): one line per fault, ``{"kind", "target", "started", "ended",
"dependency_down": bool}``; a fault whose target is ``gateway`` (killed, paused) is one where
requests may go unanswered.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.soak.invariants.violations import HTTP_NO_ANSWER, HTTP_SERVER_ERROR, Violation

GATEWAY = "gateway"


@dataclass(frozen=True)
class FaultWindow:
    kind: str
    target: str
    started: float
    ended: float
    dependency_down: bool

    def covers(self, t: float, grace: float) -> bool:
        """Whether a request sent at ``t`` may have met the fault: sent during it, within
        ``grace`` after it, or within ``grace`` before it (still in flight when it began; the
        30-minute soak saw 503s for requests sent milliseconds before a PostgreSQL restart)."""
        return self.started - grace <= t <= self.ended + grace


def read_faults(path: Path | None) -> list[FaultWindow]:
    return [
        FaultWindow(
            kind=str(line.get("kind", "")),
            target=str(line.get("target", "")),
            started=float(line["started"]),
            # A fault still going on when the run ended has no end.
            ended=float("inf") if line.get("ended") is None else float(line["ended"]),
            dependency_down=bool(line.get("dependency_down", False)),
        )
        for line in _lines(path)
    ]


def answered(
    requests: Path | None,
    faults: Sequence[FaultWindow],
    *,
    grace_seconds: float,
    overload_reasons: Collection[str] = (),
) -> list[Violation]:
    """A 503 is allowed within a window where a dependency was down (plus ``grace_seconds``), or
    anywhere with a reason in ``overload_reasons`` (admission control refusing work early). No
    answer at all is allowed only while the gateway itself was down. Any other 5xx is a violation."""
    down = [window for window in faults if window.dependency_down]
    gateway_down = [window for window in faults if window.target == GATEWAY]
    found = []
    for line in _lines(requests):
        t, status = float(line["t"]), line.get("status")
        subject = f"{line.get('method', '?')} {line.get('route', '?')} @{t:.3f}"
        detail = f"{line.get('reason') or ''} {line.get('error') or ''}".strip()
        if status is None:
            if not any(window.covers(t, grace_seconds) for window in gateway_down):
                found.append(
                    Violation(HTTP_NO_ANSWER, subject, f"no answer outside a gateway fault: {detail}")
                )
        elif int(status) == 503:
            if line.get("reason") not in overload_reasons and not any(
                window.covers(t, grace_seconds) for window in down
            ):
                found.append(Violation(HTTP_SERVER_ERROR, subject, f"503 with no dependency down: {detail}"))
        elif int(status) >= 500:
            found.append(Violation(HTTP_SERVER_ERROR, subject, f"{status}: {detail}"))
    return found


def _lines(path: Path | None) -> Iterator[dict[str, Any]]:
    if path is None or not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
