"""One API call of the load, as a polite client makes it.

Every attempt goes through Locust's HTTP client (so Locust's own statistics see it) under
its route template, and into the run's ``LoadRecorder``. A 429 or 503 that carries a
``Retry-After`` of at most ``MAX_RETRY_WAIT_SECONDS`` (or a 409 that does: a create repeated
with the Idempotency-Key of one still running) is waited for (plus jitter) and retried,
``MAX_ATTEMPTS`` attempts in all; it is counted as throttled, and the journey sees only the
final answer. A longer Retry-After (an hourly plan limit) is the answer.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import gevent
from locust.clients import HttpSession

from bench.load.report import LoadRecorder

MAX_ATTEMPTS = 4
MAX_RETRY_WAIT_SECONDS = 5.0
# Seconds to connect, and to wait for an answer (a watch stream's events come well within it).
TIMEOUT = (5.0, 30.0)


@dataclass
class Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: Any
    reason: str
    response: Any

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return f"{self.status if self.status is not None else 'no answer'} {self.reason}".strip()


def error_reason(body: Any) -> str:
    """The ``reason`` of the API's error body (API.md), or ""."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("reason") or body["error"].get("status") or "")
    return ""


def retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After") if response is not None and response.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class PoliteCalls:
    """Calls for one simulated user: Locust's session, the recorder, the bearer token."""

    def __init__(self, session: HttpSession, recorder: LoadRecorder) -> None:
        self.session = session
        self.recorder = recorder
        self.token = ""

    def call(
        self,
        method: str,
        route: str,
        path: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        auth: bool = True,
        **options: Any,
    ) -> Answer:
        """``method`` on ``path`` (default: the route itself), recorded under ``route``."""
        sent_headers = dict(headers or {})
        if auth and self.token:
            sent_headers["Authorization"] = f"Bearer {self.token}"
        throttled: list[int] = []
        answer = Answer(None, None, "", None)
        for attempt in range(MAX_ATTEMPTS):
            answer = self._attempt(method, route, path or route, sent_headers, stream, options)
            wait = retry_after(answer.response)
            if (
                answer.status in (409, 429, 503)
                and wait is not None
                and wait <= MAX_RETRY_WAIT_SECONDS
                and attempt < MAX_ATTEMPTS - 1
            ):
                throttled.append(answer.status)  # type: ignore[arg-type]
                gevent.sleep(wait + random.uniform(0.0, 0.5))
                continue
            break
        for status in throttled:
            self.recorder.throttled(status, recovered=answer.ok)
        return answer

    def _attempt(
        self,
        method: str,
        route: str,
        path: str,
        headers: dict[str, str],
        stream: bool,
        options: dict[str, Any],
    ) -> Answer:
        sent_at, started = time.time(), time.perf_counter()
        with self.session.request(
            method,
            path,
            name=route,
            headers=headers,
            stream=stream,
            timeout=TIMEOUT,
            catch_response=True,
            **options,
        ) as response:
            elapsed_ms = (time.perf_counter() - started) * 1000
            status = response.status_code or None
            body: Any = None
            if not stream and status is not None:
                content_type = response.headers.get("Content-Type", "")
                if "json" in content_type:
                    try:
                        body = response.json()
                    except ValueError:
                        body = None
                else:
                    body = response.content
            reason = error_reason(body) if status is not None and status >= 400 else ""
            error = "" if status is not None else type(response.error).__name__ + f": {response.error}"[:200]
            if status is None or status >= 500:
                response.failure(f"{status} {reason or error}")
            else:
                response.success()  # 4xx are the API's answers; the journeys judge them
        self.recorder.request(method, route, status, elapsed_ms, reason, error, sent_at=sent_at)
        return Answer(status, body, reason, response)
