"""The rate-limit headers of the contract (X-RateLimit-Limit, -Remaining, -Reset).

A method declares them in protos/ with ``option (stylestudio.common.v1.rate_limit_headers) =
true`` and its service's registration gives an ``AllowanceReader``; the kit's interceptor then
sends them as gRPC initial metadata of the same (lower-case) names on every answer to a user:
success, any refusal by the handler, and a refusal by admission control before it runs. The
gateway passes exactly these names on as HTTP response headers (gateway/errors.py
``service_headers``), so one list says what crosses, and leaves refusing those methods to the
service, which alone knows the caller's allowance.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable

from google.protobuf import descriptor

from kit.auth import Caller
from stylestudio.common.v1 import access_pb2

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


# The caller's allowance now (read after the call's own work: what it counted is in it).
AllowanceReader = Callable[[Caller], Awaitable[Allowance]]


def methods_with_rate_limit_headers(service: descriptor.ServiceDescriptor) -> list[str]:
    """``/package.Service/Method`` of each method declaring the headers; raises for one that cannot
    carry them (not a unary USER method), so a wrong declaration stops the service at start-up."""
    declared = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.Extensions[access_pb2.rate_limit_headers]:
            continue
        unary = not (method.client_streaming or method.server_streaming)
        if not unary or options.Extensions[access_pb2.access] != access_pb2.ACCESS_USER:
            raise ValueError(f"{method.full_name}: only unary USER methods carry rate-limit headers")
        declared.append(f"/{service.full_name}/{method.name}")
    return declared


def allowance_readers(
    registrations: Iterable[tuple[descriptor.ServiceDescriptor, AllowanceReader | None]],
) -> dict[str, AllowanceReader]:
    """Each declaring method's reader, from its service's registration; raises when a service
    declares the headers and gives no reader."""
    readers = {}
    for service, reader in registrations:
        for path in methods_with_rate_limit_headers(service):
            if reader is None:
                raise ValueError(
                    f"{path} declares rate-limit headers but its registration reads no allowance"
                )
            readers[path] = reader
    return readers
