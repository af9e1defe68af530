"""The audit log's SQL (the usage log's is in store.py): write once per event id, read a page
newest first, delete what is past the retention."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.db import Database
from kit.paging import Cursor
from services.analytics.audit_log import AuditEntry
from services.analytics.models import audit_events

_TYPES = {
    "id": "uuid",
    "created_at": "timestamptz",
    "action": "text",
    "actor": "text",
    "acting_service": "text",
    "target": "text",
    "client_address": "inet",
    "user_agent": "text",
    "details": "jsonb",
    "source": "text",
}
_COLUMNS = ", ".join(_TYPES)
# A batch is one json parameter unpacked by the server (as the usage log's); a redelivered
# event finds its id taken and is skipped.
_INSERT_SQL = sa.text(
    f"""
    INSERT INTO analytics.audit_events ({_COLUMNS})
    SELECT {_COLUMNS}
    FROM json_to_recordset(CAST(:rows AS json)) AS batch({", ".join(f"{c} {t}" for c, t in _TYPES.items())})
    ON CONFLICT (id) DO NOTHING
    """
)
# At most this many rows per DELETE: a long backlog is purged without one long lock.
_PURGE_BATCH = 5000
_PURGE_SQL = sa.text(
    """
    DELETE FROM analytics.audit_events
    WHERE id IN (SELECT id FROM analytics.audit_events WHERE created_at < :before LIMIT :batch)
    """
)


class AuditStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, session: AsyncConnection, entries: Sequence[AuditEntry]) -> int:
        """Insert ``entries`` in one statement, skipping ids already stored; returns how many were new."""
        if not entries:
            return 0
        encoded = json.dumps([entry.row() for entry in entries], separators=(",", ":"))
        result = await session.execute(_INSERT_SQL, {"rows": encoded})
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def list_events(
        self,
        *,
        limit: int,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        after: Cursor | None = None,
    ) -> list[AuditEntry]:
        t = audit_events
        query = sa.select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        if actor is not None:
            query = query.where(t.c.actor == actor)
        if action is not None:
            query = query.where(t.c.action == action)
        if since is not None:
            query = query.where(t.c.created_at >= since)
        if after is not None:
            query = query.where(sa.tuple_(t.c.created_at, t.c.id) < sa.tuple_(after.created_at, after.id))
        async with self._db.autocommit() as session:
            rows = (await session.execute(query)).all()
        return [
            AuditEntry(
                id=row.id,
                created_at=row.created_at,
                action=row.action,
                actor=row.actor,
                acting_service=row.acting_service,
                target=row.target,
                client_address=str(row.client_address) if row.client_address is not None else None,
                user_agent=row.user_agent,
                details=row.details or {},
                source=row.source,
            )
            for row in rows
        ]

    async def purge_audit_events(self, before: datetime) -> int:
        """Delete the events that happened before ``before``; returns how many."""
        deleted = 0
        while True:
            async with self._db.transaction() as session:
                result = await session.execute(_PURGE_SQL, {"before": before, "batch": _PURGE_BATCH})
            count = int(result.rowcount or 0)  # type: ignore[attr-defined]
            deleted += count
            if count < _PURGE_BATCH:
                return deleted
