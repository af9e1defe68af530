"""The platform's one retry policy: exponential backoff with full jitter, capped, bounded.

A wait is drawn uniformly from ``[0, min(max_delay, first_delay * 2 ** (failures - 1))]``
("full jitter"), so callers that failed together do not come back together and a
recovering dependency is not hit by synchronized waves. A retried operation stops after
``max_attempts`` attempts or ``max_seconds``, whichever comes first, and re-raises its
last error.

- ``retried(operation)`` runs an idempotent operation again while its failure is a
  dependency being unavailable (``kit.errors.dependency_failure``: the database, Redis,
  another service refusing or dropping connections); any other error is raised at once.
- ``Backoff`` paces a loop that must outlive any outage (a relay, a consumer's reads): the
  wait after each consecutive failure follows the same policy, and a success resets it.

Which policy to use: ``STEP`` for background work (saga steps, event handlers: up to a
minute), ``REQUEST`` inside a client's call (a blip is absorbed; an outage answers 503
with Retry-After within about a second), ``LOOP`` for the forever loops.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from kit.errors import DependencyUnavailable, dependency_failure

log = logging.getLogger("stylestudio.retry")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_delay: float = 0.2
    max_delay: float = 5.0
    max_attempts: int = 12
    max_seconds: float = 60.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failure (full jitter)."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** max(0, min(failures - 1, 62)))
        return random.uniform(0.0, ceiling)

    def retrying(self, retry_on: Callable[[BaseException], bool], what: str = "") -> AsyncRetrying:
        """A tenacity ``AsyncRetrying`` with this policy, retrying while ``retry_on(error)``."""

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            unavailable = dependency_failure(error) if error is not None else None
            log.warning(
                "retrying after a failure",
                extra={
                    "operation": what,
                    "attempt": state.attempt_number,
                    "dependency": unavailable.dependency if unavailable is not None else "",
                    "error": type(error).__name__,
                },
            )

        return AsyncRetrying(
            retry=retry_if_exception(retry_on),
            wait=wait_random_exponential(multiplier=self.first_delay, max=self.max_delay),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_seconds),
            before_sleep=before_sleep,
            reraise=True,
        )


# Background steps (saga steps, event handlers): about a minute of a dependency's outage.
STEP = RetryPolicy(first_delay=0.2, max_delay=5.0, max_attempts=15, max_seconds=60.0)
# Inside a client's call: a blip is absorbed; a longer outage answers 503 + Retry-After.
REQUEST = RetryPolicy(first_delay=0.05, max_delay=0.5, max_attempts=3, max_seconds=1.5)
# The forever loops: only the wait matters (attempts are not counted).
LOOP = RetryPolicy(first_delay=0.1, max_delay=5.0)


def is_unavailable(error: BaseException) -> bool:
    """True when ``error`` is a dependency refusing or dropping connections (worth a retry)."""
    return isinstance(error, DependencyUnavailable) or dependency_failure(error) is not None


async def retried(operation: Callable[[], Awaitable[T]], policy: RetryPolicy = STEP, what: str = "") -> T:
    """``await operation()``, again (per ``policy``) while it fails because a dependency is
    unavailable. The operation must be safe to run twice (idempotent, or rolled back)."""
    async for attempt in policy.retrying(is_unavailable, what):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


class Backoff:
    """The waits of a loop that must outlive an outage: each consecutive failure waits per
    ``policy`` (jittered, capped), a success starts over."""

    __slots__ = ("_failures", "_policy")

    def __init__(self, policy: RetryPolicy = LOOP) -> None:
        self._policy, self._failures = policy, 0

    @property
    def failures(self) -> int:
        return self._failures

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        self._failures += 1
        return self._policy.delay(self._failures)

    async def wait(self) -> None:
        """Count a failure and sleep the policy's wait for it."""
        await asyncio.sleep(self.next_delay())
