"""The rate-limit headers of the contract (X-RateLimit-Limit, -Remaining, -Reset).

A service that counts a limit sends them as gRPC initial metadata of the same (lower-case)
names, on success and on its RATE_LIMITED refusal alike; the gateway passes exactly these
names on as HTTP response headers (gateway/app.py), so one list says what crosses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

LIMIT_HEADER = "x-ratelimit-limit"
REMAINING_HEADER = "x-ratelimit-remaining"
# Seconds until the next call is allowed: 0 while some remain.
RESET_HEADER = "x-ratelimit-reset"
RATE_LIMIT_HEADERS = (LIMIT_HEADER, REMAINING_HEADER, RESET_HEADER)


@dataclasses.dataclass(frozen=True, slots=True)
class Allowance:
    """A limit, what is left of it now, and when the next call is allowed."""

    limit: int
    remaining: int
    # Seconds until the next call is allowed (rounded up); 0 while ``remaining`` > 0.
    reset_seconds: int
    next_allowed_at: dt.datetime

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            (LIMIT_HEADER, str(self.limit)),
            (REMAINING_HEADER, str(self.remaining)),
            (RESET_HEADER, str(self.reset_seconds)),
        )
