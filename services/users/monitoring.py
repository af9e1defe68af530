"""What the users service tells Prometheus beyond the kit's figures (docs/operations.md,
"Metrics"): sign-ins by method and outcome, and why the refused ones were refused."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from prometheus_client import Counter

from kit.errors import DomainError
from kit.metrics import ServiceMetrics

P = ParamSpec("P")
T = TypeVar("T")

sign_ins = Counter(
    "stylestudio_users_sign_ins",
    "Sign-ins (signup, password, oauth, refresh) by outcome (succeeded, refused) and the refusal's "
    "error reason (UNAUTHORIZED for a wrong pair, RATE_LIMITED when throttled ...).",
    ["method", "outcome", "reason"],
    registry=None,
)


def counted(method: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Count each call of a sign-in: succeeded, or refused with its DomainError's reason."""

    def decorate(sign_in: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(sign_in)
        async def counting(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                signed_in = await sign_in(*args, **kwargs)
            except DomainError as refusal:
                sign_ins.labels(method, "refused", str(refusal.reason)).inc()
                raise
            sign_ins.labels(method, "succeeded", "").inc()
            return signed_in

        return counting

    return decorate


def watch(metrics: ServiceMetrics) -> None:
    metrics.register(sign_ins)
