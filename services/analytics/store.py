"""The only place the analytics service talks SQL: the usage log, its partitions, its numbers.

Every number is computed by PostgreSQL (counts, sums, percentiles, grouping sets);
Python receives a handful of grouped rows, never the records themselves.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.db import Database
from kit.paging import Cursor
from services.analytics import usage_log
from services.analytics.metrics import GenerationMetrics, GroupedCount, Window, window_parts
from services.analytics.models import usage_daily, usage_records
from services.analytics.partitions import PARENT_TABLE, Month

SCHEMA = "analytics"
_PARTITION_LOCK = zlib.crc32(b"stylestudio-analytics-partitions")


@dataclass(frozen=True)
class UsageRow:
    id: uuid.UUID
    action: str
    metadata: dict[str, object]
    session_id: str | None
    created_at: datetime


_ROW_COLUMNS = (
    usage_records.c.id,
    usage_records.c.action,
    usage_records.c.metadata,
    usage_records.c.session_id,
    usage_records.c.created_at,
)

# A batch travels as ONE json parameter (a list of row objects, encoded by the json module in
# C) that the server unpacks with json_to_recordset: one statement whatever the batch size,
# prepared once, no per-value adaptation in Python.
_INSERT_TYPES = {
    "id": "uuid",
    "created_at": "timestamptz",
    "user_id": "text",
    "action": "text",
    "source": "text",
    "metadata": "jsonb",
    "session_id": "text",
    "ip_address": "inet",
    "user_agent": "text",
    "model": "text",
    "style": "text",
    "reason": "text",
    "tokens": "bigint",
    "processing_ms": "bigint",
    "synthetic": "boolean",
}
_INSERT_COLUMNS = ", ".join(_INSERT_TYPES)
_RECORDSET = ", ".join(f"{name} {kind}" for name, kind in _INSERT_TYPES.items())

# The records go in, the ones really inserted (not already recorded) are counted into the
# daily rollup by the same statement, in key order (concurrent batches lock rollup rows in
# the same order, so they wait for each other instead of deadlocking).
_INSERT_SQL = sa.text(
    f"""
    WITH inserted AS (
        INSERT INTO {SCHEMA}.usage_records ({_INSERT_COLUMNS})
        SELECT {_INSERT_COLUMNS} FROM json_to_recordset(CAST(:rows AS json)) AS batch({_RECORDSET})
        ON CONFLICT DO NOTHING
        RETURNING created_at, action, model, style, reason, tokens, synthetic
    ), rolled_up AS (
        INSERT INTO {SCHEMA}.usage_daily AS daily
            (day, action, model, style, reason, synthetic, records, tokens)
        SELECT (created_at AT TIME ZONE 'UTC')::date, action, coalesce(model, ''), coalesce(style, ''),
               coalesce(reason, ''), synthetic, count(*), coalesce(sum(tokens), 0)
        FROM inserted
        GROUP BY 1, 2, 3, 4, 5, 6
        ORDER BY 2, 1, 3, 4, 5, 6
        ON CONFLICT (action, day, model, style, reason, synthetic)
        DO UPDATE SET records = daily.records + excluded.records, tokens = daily.tokens + excluded.tokens
    )
    SELECT count(*) FROM inserted
    """
)

_METRICS_SQL = sa.text(
    """
    SELECT count(*) FILTER (WHERE action = :started) AS total,
           count(*) FILTER (WHERE action = :completed) AS completed,
           count(*) FILTER (WHERE action = :failed) AS failed,
           coalesce(avg(processing_ms) FILTER (WHERE action = :completed), 0) AS avg_ms,
           coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_ms)
                    FILTER (WHERE action = :completed), 0) AS p95_ms,
           coalesce(sum(tokens) FILTER (WHERE action = :completed), 0) AS tokens
    FROM analytics.usage_records
    WHERE user_id = :user_id AND action IN (:started, :completed, :failed)
      AND created_at >= :since AND created_at <= :until
    """
)

# One pass over the window: totals per action, and per day, model, style and error reason.
# GROUPING(...) tells the sets apart (a bit is 1 where that column is not grouped).
_GROUPED_SQL = """
    SELECT action, day, model, style, reason, count(*) AS n, coalesce(sum(tokens), 0) AS tokens,
           GROUPING(day, model, style, reason) AS mask
    FROM (
        SELECT action, (created_at AT TIME ZONE 'UTC')::date AS day, model, style, reason, tokens
        FROM analytics.usage_records
        WHERE action = ANY(:actions) AND created_at >= :since AND created_at <= :until {user_filter}
    ) AS window_records
    GROUP BY GROUPING SETS ((action), (action, day), (action, model), (action, style), (action, reason))
"""
# The platform-wide analytics: whole days from the daily rollup, the window's partial first
# and last days from the records (each range prunes to its partition and reads the
# (action, created_at) index only). Synthetic (load-test) records are left out unless asked for.
_ROLLUP_TEMPLATE = """
    SELECT action, day, model, style, reason, sum(n) AS n, coalesce(sum(tokens), 0) AS tokens,
           GROUPING(day, model, style, reason) AS mask
    FROM (
        SELECT action, day, NULLIF(model, '') AS model, NULLIF(style, '') AS style,
               NULLIF(reason, '') AS reason, records AS n, tokens
        FROM analytics.usage_daily
        WHERE action = ANY(:actions) AND day >= :first_day AND day < :end_day {synthetic_filter}
        UNION ALL
        SELECT action, (created_at AT TIME ZONE 'UTC')::date, model, style, reason, 1, tokens
        FROM analytics.usage_records
        WHERE action = ANY(:actions) AND created_at >= :since AND created_at < :days_from {synthetic_filter}
        UNION ALL
        SELECT action, (created_at AT TIME ZONE 'UTC')::date, model, style, reason, 1, tokens
        FROM analytics.usage_records
        WHERE action = ANY(:actions) AND created_at >= :days_until AND created_at < :end {synthetic_filter}
    ) AS window_records
    GROUP BY GROUPING SETS ((action), (action, day), (action, model), (action, style), (action, reason))
"""
_ROLLUP_SQL = _ROLLUP_TEMPLATE.format(synthetic_filter="AND NOT synthetic")
_ROLLUP_WITH_SYNTHETIC_SQL = _ROLLUP_TEMPLATE.format(synthetic_filter="")
# The networks most sign-ups came from: the window's sign-up records through the
# (action, created_at) index; sign-ups are few next to generations.
_SIGNUP_NETWORKS_TEMPLATE = """
    SELECT (metadata ->> :key) COLLATE "C" AS network, count(*) AS n
    FROM analytics.usage_records
    WHERE action = :action AND created_at >= :since AND created_at <= :until AND metadata ? :key
          {synthetic_filter}
    GROUP BY 1
    ORDER BY n DESC, network
    LIMIT :top
"""
_SIGNUP_NETWORKS_SQL = sa.text(_SIGNUP_NETWORKS_TEMPLATE.format(synthetic_filter="AND NOT synthetic"))
_SIGNUP_NETWORKS_WITH_SYNTHETIC_SQL = sa.text(_SIGNUP_NETWORKS_TEMPLATE.format(synthetic_filter=""))
_REBUILD_SQL = """
    INSERT INTO analytics.usage_daily (day, action, model, style, reason, synthetic, records, tokens)
    SELECT (created_at AT TIME ZONE 'UTC')::date, action, coalesce(model, ''), coalesce(style, ''),
           coalesce(reason, ''), synthetic, count(*), coalesce(sum(tokens), 0)
    FROM analytics.usage_records
    GROUP BY 1, 2, 3, 4, 5, 6
"""
_SET_TOTAL, _SET_DAY, _SET_MODEL, _SET_STYLE, _SET_REASON = 0b1111, 0b0111, 0b1011, 0b1101, 0b1110


class UsageStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Months known to have a partition, so the write path checks the catalog once per month.
        self._partitions: set[Month] = set()

    # --- writing -----------------------------------------------------------------------------

    async def record(self, session: AsyncConnection, entries: Sequence[usage_log.UsageEntry]) -> int:
        """Insert ``entries`` in one statement, skipping ids already recorded; returns how many were new."""
        if not entries:
            return 0
        missing = sorted({Month.of(entry.created_at) for entry in entries} - self._partitions)
        if missing:
            await self.ensure_partitions(missing)
        rows = [entry.row() for entry in entries]
        for row in rows:
            row["id"], row["created_at"] = str(row["id"]), row["created_at"].isoformat()
        encoded = json.dumps(rows, separators=(",", ":"))
        return int((await session.execute(_INSERT_SQL, {"rows": encoded})).scalar_one())

    # --- partitions --------------------------------------------------------------------------

    async def ensure_partitions(self, months: list[Month]) -> list[Month]:
        """Create the missing monthly partitions (replicas take turns); returns the ones created."""
        created: list[Month] = []
        async with self._db.transaction() as session:
            await session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PARTITION_LOCK})
            existing = set(await self._existing(session))
            for month in months:
                if month not in existing:
                    await session.execute(sa.text(_create_partition_sql(month)))
                    created.append(month)
        self._partitions.update(months)
        return created

    async def existing_partitions(self) -> list[Month]:
        async with self._db.transaction() as session:
            return await self._existing(session)

    async def drop_partitions(self, months: list[Month]) -> None:
        async with self._db.transaction() as session:
            await session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PARTITION_LOCK})
            for month in months:
                await session.execute(sa.text(f"DROP TABLE IF EXISTS {SCHEMA}.{month.partition_name}"))
                await session.execute(
                    sa.delete(usage_daily).where(
                        usage_daily.c.day >= month.first_day, usage_daily.c.day < month.plus(1).first_day
                    )
                )
        self._partitions.difference_update(months)

    async def rebuild_daily_rollup(self) -> None:
        """Count the whole log into the daily rollup again (after records were loaded around the
        write path, e.g. a backfill). Writers wait meanwhile, so nothing is counted twice."""
        async with self._db.transaction() as session:
            await session.execute(sa.text(f"LOCK TABLE {SCHEMA}.usage_daily IN EXCLUSIVE MODE"))
            await session.execute(sa.delete(usage_daily))
            await session.execute(sa.text(_REBUILD_SQL))

    @staticmethod
    async def _existing(session: AsyncConnection) -> list[Month]:
        names = await session.scalars(
            sa.text(
                """
                SELECT child.relname FROM pg_inherits
                JOIN pg_class child ON child.oid = pg_inherits.inhrelid
                JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
                JOIN pg_namespace ns ON ns.oid = parent.relnamespace
                WHERE ns.nspname = :schema AND parent.relname = :parent
                """
            ),
            {"schema": SCHEMA, "parent": PARENT_TABLE},
        )
        return sorted(month for name in names if (month := Month.from_partition_name(name)) is not None)

    # --- reading -----------------------------------------------------------------------------

    async def list_records(
        self,
        user_id: str,
        *,
        limit: int,
        action: str | None = None,
        since: datetime | None = None,
        after: Cursor | None = None,
    ) -> list[UsageRow]:
        """A user's records, newest first, ``limit`` at most, after ``after`` (keyset paging)."""
        t = usage_records.c
        query = sa.select(*_ROW_COLUMNS).where(t.user_id == user_id)
        if action:
            query = query.where(t.action == action)
        if since is not None:
            query = query.where(t.created_at >= since)
        if after is not None:
            query = query.where(sa.tuple_(t.created_at, t.id) < sa.tuple_(after.created_at, after.id))
        query = query.order_by(t.created_at.desc(), t.id.desc()).limit(limit)
        async with self._db.transaction() as session:
            rows = (await session.execute(query)).all()
        return [UsageRow(*row) for row in rows]

    async def action_counts(self, user_id: str) -> dict[str, int]:
        t = usage_records.c
        query = sa.select(t.action, sa.func.count()).where(t.user_id == user_id).group_by(t.action)
        async with self._db.transaction() as session:
            return {action: count for action, count in (await session.execute(query)).all()}

    async def generation_metrics(self, user_id: str, window: Window) -> GenerationMetrics:
        params = {
            "user_id": user_id,
            "since": window.since,
            "until": window.until,
            "started": usage_log.GENERATION_STARTED,
            "completed": usage_log.GENERATION_COMPLETED,
            "failed": usage_log.GENERATION_FAILED,
        }
        async with self._db.transaction() as session:
            row = (await session.execute(_METRICS_SQL, params)).one()
        return GenerationMetrics(
            total=row.total,
            completed=row.completed,
            failed=row.failed,
            avg_processing_ms=float(row.avg_ms),
            p95_processing_ms=float(row.p95_ms),
            tokens_used=int(row.tokens),
        )

    async def grouped_counts(
        self,
        window: Window,
        actions: Sequence[str],
        user_id: str | None = None,
        *,
        include_synthetic: bool = False,
    ) -> list[GroupedCount]:
        """Counts and token sums over the window, per action and per day, model, style, reason.

        ``user_id`` limits them to one user's records (an enterprise user's own analytics, all
        of them), read from the records through the user's index; the platform's come mostly
        from the daily rollup, without synthetic records unless ``include_synthetic``.
        """
        params: dict[str, object] = {"actions": list(actions)}
        if user_id:
            sql = _GROUPED_SQL.format(user_filter="AND user_id = :user_id")
            params.update(since=window.since, until=window.until, user_id=user_id)
        else:
            sql = _ROLLUP_WITH_SYNTHETIC_SQL if include_synthetic else _ROLLUP_SQL
            params.update(rollup_params(window))
        async with self._db.transaction() as session:
            rows = (await session.execute(sa.text(sql), params)).all()
        return [grouped for row in rows if (grouped := grouped_count(row)) is not None]

    async def signup_networks(
        self, window: Window, top: int, *, include_synthetic: bool = False
    ) -> list[tuple[str, int]]:
        """The ``top`` networks with the most sign-ups in the window, most first."""
        params = {
            "key": usage_log.SIGNUP_NETWORK,
            "action": usage_log.SIGNUP,
            "since": window.since,
            "until": window.until,
            "top": top,
        }
        async with self._db.transaction() as session:
            sql = _SIGNUP_NETWORKS_WITH_SYNTHETIC_SQL if include_synthetic else _SIGNUP_NETWORKS_SQL
            rows = (await session.execute(sql, params)).all()
        return [(str(row.network), int(row.n)) for row in rows]

    async def explain(self, sql: str, params: dict[str, object]) -> str:
        """The plan of a query (tests and the benchmark check that it stays an index/partition scan)."""
        async with self._db.transaction() as session:
            return "\n".join(await session.scalars(sa.text(f"EXPLAIN {sql}"), params))


def rollup_params(window: Window) -> dict[str, object]:
    parts = window_parts(window)
    return {
        "since": parts.since,
        "days_from": parts.days_from,
        "days_until": parts.days_until,
        "end": parts.end,
        "first_day": parts.first_day,
        "end_day": parts.end_day,
    }


def _create_partition_sql(month: Month) -> str:
    bounds = f"FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"
    partition = f"{SCHEMA}.{month.partition_name}"
    return f"CREATE TABLE {partition} PARTITION OF {SCHEMA}.{PARENT_TABLE} FOR VALUES {bounds}"


def grouped_count(row: sa.Row) -> GroupedCount | None:  # type: ignore[type-arg]
    common = {"action": row.action, "count": int(row.n), "tokens": int(row.tokens)}
    if row.mask == _SET_TOTAL:
        return GroupedCount(**common)  # type: ignore[arg-type]
    # A set whose own column is NULL (a generation without a style, say) is not a bucket.
    by_set = {_SET_DAY: "day", _SET_MODEL: "model", _SET_STYLE: "style", _SET_REASON: "reason"}
    column = by_set.get(row.mask)
    if column is None or getattr(row, column) is None:
        return None
    return GroupedCount(**common, **{column: getattr(row, column)})  # type: ignore[arg-type]


METRICS_SQL = _METRICS_SQL.text
GROUPED_SQL = _GROUPED_SQL
SYSTEM_SQL = _ROLLUP_SQL
SIGNUP_NETWORKS_SQL = _SIGNUP_NETWORKS_SQL.text
