"""Where a generation is in its saga, and which moves are allowed.

A generation is STARTING (hidden from users) while its tokens are being held, then
QUEUED, PROCESSING, and one of the terminal COMPLETED, FAILED, CANCELED. Before a
terminal status is recorded, its outcome is *decided* (``resolution``) by exactly
one actor (worker, cancel, sweeper); the billing step that follows is idempotent
and anybody may finish it, so a crash between deciding and recording never charges
or refunds twice.
"""

from __future__ import annotations

import enum

from kit.errors import FailedPrecondition


class Status(enum.StrEnum):
    STARTING = "STARTING"
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
# Statuses users see; STARTING only exists while the start is in flight.
VISIBLE = frozenset(set(Status) - {Status.STARTING})
# Where an outcome may still be decided.
RUNNING = frozenset({Status.QUEUED, Status.PROCESSING})

# The statuses a generation may move to from each status.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.STARTING: frozenset({Status.QUEUED}),
    Status.QUEUED: frozenset({Status.PROCESSING, Status.FAILED, Status.CANCELED}),
    Status.PROCESSING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}


def can_move(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def is_terminal(status: Status | str) -> bool:
    return Status(status) in TERMINAL


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses from which ``target`` may be reached (the WHERE of a guarded update)."""
    return frozenset(status for status, targets in TRANSITIONS.items() if target in targets)


def check_cancelable(status: Status, resolution: Status | None) -> bool:
    """True if a cancel should proceed; False if it is already canceled (a no-op).

    Raises FailedPrecondition for generations that finished or are finishing otherwise.
    """
    if status is Status.CANCELED or resolution is Status.CANCELED:
        return False
    if status in TERMINAL or resolution is not None:
        outcome = resolution or status
        raise FailedPrecondition(
            f"The generation is {outcome.value.lower()} and can no longer be canceled",
            details={"status": outcome.value},
        )
    return True
