"""The generation schema: every generation terminal once the sweeper's deadline has passed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.soak.invariants.violations import GENERATION_NOT_TERMINAL, Violation
from services.generation.lifecycle import TERMINAL, Status
from services.generation.models import generations


@dataclass(frozen=True)
class GenerationFacts:
    """What the other checks need to know of a generation."""

    id: str
    status: Status
    token_cost: int


async def facts(connection: AsyncConnection) -> list[GenerationFacts]:
    rows = await connection.execute(
        sa.select(generations.c.id, generations.c.status, generations.c.token_cost)
    )
    return [GenerationFacts(str(row.id), Status(row.status), int(row.token_cost)) for row in rows]


async def terminal_after_deadline(connection: AsyncConnection, deadline: timedelta) -> list[Violation]:
    """Generations created more than ``deadline`` ago (the generation deadline plus the sweeper's
    interval: by then the sweeper has failed whatever no worker finished) that are not terminal."""
    now = datetime.now(UTC)
    rows = await connection.execute(
        sa.select(generations.c.id, generations.c.status, generations.c.created_at).where(
            generations.c.status.notin_([status.value for status in TERMINAL]),
            generations.c.created_at < now - deadline,
        )
    )
    return [
        Violation(
            GENERATION_NOT_TERMINAL,
            str(row.id),
            f"{row.status} {int((now - row.created_at).total_seconds())} s after it was created "
            f"(deadline {int(deadline.total_seconds())} s)",
        )
        for row in rows
    ]
