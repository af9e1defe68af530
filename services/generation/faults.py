"""Fault injection for tests and demos, off unless ``fault_injection`` is set.

A prompt may carry directives:
  ``[fail:permanent]``      the local provider fails for good (PROCESSING_ERROR);
  ``[fail:transient:N]``    its first N tries fail like a timeout (then it works);
  ``[latency:S]``           each try takes S seconds;
  ``[queued:S]``            the worker waits S seconds before taking the job (QUEUED meanwhile);
  ``[pause:STEP]``          the saga stops at checkpoint STEP the first time it gets there
                            (a Redis key tells the test, which then kills the process, or
                            sets the key to ``resume`` to let it go on).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

_DIRECTIVE = re.compile(r"\[(fail|latency|queued|pause):([a-z0-9_.:]+)\]")
# Checkpoints of the saga, in order.
CHECKPOINTS = (
    "after_hold",
    "after_queue",
    "after_processing",
    "before_store",
    "after_store",
    "after_decide",
    "after_billing",
)


@dataclass(frozen=True)
class Directives:
    fail_permanently: bool = False
    transient_failures: int = 0
    latency_seconds: float | None = None
    queued_seconds: float = 0.0
    pauses: frozenset[str] = frozenset()


NONE = Directives()


def parse_directives(prompt: str, enabled: bool) -> Directives:
    if not enabled:
        return NONE
    fail_permanently, transient, latency, queued, pauses = False, 0, None, 0.0, set()
    for kind, value in _DIRECTIVE.findall(prompt):
        if kind == "fail" and value == "permanent":
            fail_permanently = True
        elif kind == "fail" and value.startswith("transient:"):
            transient = int(value.split(":", 1)[1])
        elif kind == "latency":
            latency = float(value)
        elif kind == "queued":
            queued = float(value)
        elif kind == "pause" and value in CHECKPOINTS:
            pauses.add(value)
    return Directives(fail_permanently, transient, latency, queued, frozenset(pauses))


PAUSED, RESUME = b"paused", b"resume"


def checkpoint_key(prefix: str, generation_id: object, step: str) -> str:
    return f"{prefix}:generation:checkpoint:{generation_id}:{step}"


async def checkpoint(
    redis: Redis, prefix: str, generation_id: object, step: str, directives: Directives
) -> None:
    """Stop here the first time, if the prompt asks to, until the test kills the process or
    sets the checkpoint's key to ``resume``."""
    if step not in directives.pauses:
        return
    key = checkpoint_key(prefix, generation_id, step)
    if not await redis.set(key, PAUSED, nx=True):
        return
    while True:  # the signal lives in Redis (the test is another process): poll it
        if await redis.get(key) != PAUSED:
            return
        await asyncio.sleep(0.05)


# A switch the soak's fault injector flips at run time, read by the local provider on every
# try when ``local_provider_fault_switch`` is set (refused in production): "fail:S" fails
# every try like a timeout, "stall:S" and "slow:S" hold every try S seconds. The key expires
# when the fault is over.
PROVIDER_FAULT_MODES = ("fail", "stall", "slow")


def provider_fault_key(prefix: str) -> str:
    return f"{prefix}:generation:local-provider-fault"


@dataclass(frozen=True)
class ProviderFault:
    mode: str
    seconds: float


async def read_provider_fault(redis: Redis, prefix: str) -> ProviderFault | None:
    """The fault the switch asks for now, or None (also when Redis cannot be read)."""
    try:
        raw = await redis.get(provider_fault_key(prefix))
    except (RedisError, OSError):
        return None
    if not raw:
        return None
    mode, _, seconds = (raw.decode() if isinstance(raw, bytes) else str(raw)).partition(":")
    try:
        duration = float(seconds or 0)
    except ValueError:
        return None
    return ProviderFault(mode, duration) if mode in PROVIDER_FAULT_MODES else None
