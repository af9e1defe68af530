"""Admission control: a saturated process refuses new work at once instead of queueing it.

A per-process count of the calls in flight. A call from outside the platform (PUBLIC, USER,
ADMIN) past ``limit`` is refused before its handler runs, with RATE_LIMITED (gRPC
RESOURCE_EXHAUSTED, HTTP 429) and a Retry-After: the client learns in a millisecond what it
would otherwise have learnt from a deadline, and the calls already admitted keep their share of
the database pool. INTERNAL calls (another service finishing work it has already accepted: a
saga's capture, release or stored results, a credential-state rebuild) are never refused, but
count, so finishing accepted work goes before starting new work. Health checks and reflection
never reach the limiter.

A unary or client-streaming call holds its place until it ends. A server-streaming call (a
generation's watch, a download) is refused like the others when the process is saturated,
but does not hold a place while it streams: it mostly waits, and a few hundred watchers must
not refuse every start.
"""

from __future__ import annotations

import math

from kit.access import MethodAccess
from kit.errors import RateLimited
from stylestudio.common.v1 import access_pb2


class InFlightLimiter:
    """At most ``limit`` calls at once (None: no limit); one per process, shared by every method."""

    def __init__(self, limit: int | None, retry_after_seconds: float, service: str) -> None:
        self.limit = limit
        self.in_flight = 0
        self.refused = 0
        self._retry_after = retry_after_seconds
        self._service = service

    def admits(self, access: MethodAccess) -> bool:
        """Whether a new call of this access level may start now."""
        if self.limit is None or access.level == access_pb2.ACCESS_INTERNAL:
            return True
        if self.in_flight < self.limit:
            return True
        self.refused += 1
        return False

    def enter(self) -> None:
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def refusal(self) -> RateLimited:
        retry_after = max(1, math.ceil(self._retry_after))
        return RateLimited(
            f"The {self._service} service is busy; try again in {retry_after} s",
            details={"scope": "service", "retry_after_seconds": retry_after},
            retry_after_seconds=retry_after,
        )


UNLIMITED = InFlightLimiter(None, 1.0, "")
