"""Every event produced reached analytics exactly once.

The usage log's records are keyed by event id, and each names the fact it records (the user,
session, file, generation, purchase or transfer). The facts are read from the services that
produced the events, in the checker's snapshot:

| action | one record per |
|---|---|
| signup | user (users.users) |
| login / logout | session (users.sessions) / session ended by a logout |
| file_upload / file_delete | file row, results included (files.files) / deleted file |
| generation_started | generation past STARTING (generation.generations) |
| generation_completed, _failed, _canceled | generation in that status |
| token_purchase / tokens_refunded | purchase credited (a PURCHASE transfer) / REFUNDED purchase |
| tokens_granted | GRANT transfer (billing.transfers) |

A fact with no record is missing; a fact recorded under two event ids was published twice; an
event id recorded twice was ingested twice. Events still in an outbox (never relayed) or in an
events stream's dead letters (given up on by a consumer) never reached anyone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.soak.invariants.generations import GenerationFacts
from bench.soak.invariants.violations import (
    ANALYTICS_DUPLICATE,
    ANALYTICS_MISSING,
    EVENT_UNDELIVERED,
    Violation,
)
from services.analytics import usage_log
from services.analytics.models import usage_records
from services.billing import models as billing
from services.files import models as files
from services.generation import models as generation
from services.generation.lifecycle import Status
from services.users import models as users

# The metadata key naming each action's fact (None: a column of the record says it).
_FACT_KEY: dict[str, str | None] = {
    usage_log.SIGNUP: None,  # user_id
    usage_log.LOGIN: None,  # session_id
    usage_log.LOGOUT: None,  # session_id
    usage_log.FILE_UPLOAD: "fileId",
    usage_log.FILE_DELETE: "fileId",
    usage_log.GENERATION_STARTED: "generationId",
    usage_log.GENERATION_COMPLETED: "generationId",
    usage_log.GENERATION_FAILED: "generationId",
    usage_log.GENERATION_CANCELED: "generationId",
    usage_log.TOKEN_PURCHASE: "purchaseId",
    usage_log.TOKENS_GRANTED: "transactionId",
    usage_log.TOKENS_REFUNDED: "purchaseId",
}
_OUTCOMES = {
    Status.COMPLETED: usage_log.GENERATION_COMPLETED,
    Status.FAILED: usage_log.GENERATION_FAILED,
    Status.CANCELED: usage_log.GENERATION_CANCELED,
}
OUTBOXES = (users.outbox, billing.outbox, files.outbox, generation.outbox)


async def delivered_once(
    connection: AsyncConnection, generations: Sequence[GenerationFacts], redis: Redis, prefix: str
) -> list[Violation]:
    produced = await _facts(connection, generations)
    recorded, ingested = await _records(connection)
    found = [
        Violation(ANALYTICS_DUPLICATE, event_id, f"event recorded {count} times in the usage log")
        for event_id, count in sorted(ingested.items())
        if count > 1
    ]
    for action, keys in sorted(produced.items()):
        for key in sorted(keys):
            events = recorded[action].get(key, set())
            if not events:
                found.append(Violation(ANALYTICS_MISSING, key, f"no {action} record"))
            elif len(events) > 1:
                found.append(
                    Violation(ANALYTICS_DUPLICATE, key, f"{action} recorded under {len(events)} event ids")
                )
    found += await _undelivered(connection, redis, prefix)
    return found


async def _facts(connection: AsyncConnection, generations: Sequence[GenerationFacts]) -> dict[str, set[str]]:
    async def ids(query: sa.Select[tuple[object]]) -> set[str]:
        return {str(value) for value in (await connection.execute(query)).scalars()}

    transfers, purchases = billing.transfers, billing.purchases
    produced = {
        usage_log.SIGNUP: await ids(sa.select(users.users.c.id)),
        usage_log.LOGIN: await ids(sa.select(users.sessions.c.id)),
        usage_log.LOGOUT: await ids(
            sa.select(users.sessions.c.id).where(users.sessions.c.revoked_reason == "logout")
        ),
        usage_log.FILE_UPLOAD: await ids(sa.select(files.files.c.id)),
        usage_log.FILE_DELETE: await ids(
            sa.select(files.files.c.id).where(files.files.c.status == files.DELETED)
        ),
        usage_log.TOKENS_GRANTED: await ids(sa.select(transfers.c.id).where(transfers.c.kind == "GRANT")),
        usage_log.TOKEN_PURCHASE: await ids(
            sa.select(transfers.c.purchase_id)
            .where(transfers.c.kind == "PURCHASE", transfers.c.purchase_id.isnot(None))
            .distinct()
        ),
        usage_log.TOKENS_REFUNDED: await ids(
            sa.select(purchases.c.id).where(purchases.c.status == "REFUNDED")
        ),
        usage_log.GENERATION_STARTED: {g.id for g in generations if g.status is not Status.STARTING},
    }
    for status, action in _OUTCOMES.items():
        produced[action] = {g.id for g in generations if g.status is status}
    return produced


async def _records(connection: AsyncConnection) -> tuple[dict[str, dict[str, set[str]]], Counter[str]]:
    """action -> fact -> event ids recorded for it; and how many times each event id was recorded."""
    r = usage_records.c
    keys = {name: r["metadata"][name].astext for name in {k for k in _FACT_KEY.values() if k}}
    rows = await connection.execute(
        sa.select(r.id, r.action, r.user_id, r.session_id, *(c.label(n) for n, c in keys.items())).where(
            r.action.in_(list(_FACT_KEY)), r.source != usage_log.CLIENT_SOURCE
        )
    )
    recorded: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    ingested: Counter[str] = Counter()
    for row in rows:
        event_id = str(row.id)
        ingested[event_id] += 1
        name = _FACT_KEY[row.action]
        if name is not None:
            key = getattr(row, name)
        elif row.action == usage_log.SIGNUP:
            key = row.user_id
        else:
            key = row.session_id
        recorded[row.action][str(key)].add(event_id)
    return recorded, ingested


async def _undelivered(connection: AsyncConnection, redis: Redis, prefix: str) -> list[Violation]:
    found = []
    for outbox in OUTBOXES:
        rows = await connection.execute(
            sa.select(outbox.c.event_id, outbox.c.event_type, outbox.c.created_at)
        )
        found += [
            Violation(
                EVENT_UNDELIVERED,
                str(row.event_id),
                f"{row.event_type} still in {outbox.schema}'s outbox since {row.created_at:%H:%M:%S}",
            )
            for row in rows
        ]
    # Events some consumer gave up on (a job given up on is the sweeper's to send again: not here).
    async for key in redis.scan_iter(match=f"{prefix}:events.*.dead", count=1000, _type="stream"):
        entries: Any = await redis.xrange(key)  # redis-py types RESP replies as a union
        for _, fields in entries:
            found.append(
                Violation(
                    EVENT_UNDELIVERED,
                    _text(fields.get(b"id", b"?")),
                    f"{_text(fields.get(b'type', b'?'))} dead-lettered in {_text(key)}",
                )
            )
    return found


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
