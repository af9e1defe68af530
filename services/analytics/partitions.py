"""The usage log's monthly partitions: which must exist, which have expired.

Month arithmetic is plain Python (tested without a database); ``maintain`` is the
service's background loop that applies it through the store.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

log = logging.getLogger("stylestudio.analytics.partitions")

PARENT_TABLE = "usage_records"
_NAME = re.compile(rf"^{PARENT_TABLE}_p(\d{{4}})(\d{{2}})$")


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime) -> Month:
        moment = moment.astimezone(UTC)
        return cls(moment.year, moment.month)

    @classmethod
    def from_partition_name(cls, name: str) -> Month | None:
        """The month of a partition this service created; None for any other table."""
        match = _NAME.match(name)
        if match is None or not 1 <= int(match.group(2)) <= 12:
            return None
        return cls(int(match.group(1)), int(match.group(2)))

    def plus(self, months: int) -> Month:
        index = self.year * 12 + (self.month - 1) + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.plus(1).start

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def partition_name(self) -> str:
        return f"{PARENT_TABLE}_p{self.year:04d}{self.month:02d}"


def months_to_create(now: datetime, ahead: int) -> list[Month]:
    """The current month and ``ahead`` months after it."""
    current = Month.of(now)
    return [current.plus(offset) for offset in range(ahead + 1)]


def retention_start(now: datetime, retention_months: int) -> Month | None:
    """The oldest month kept: the current one and the ``retention_months - 1`` before it.

    None when retention is off (0): nothing is ever dropped.
    """
    if retention_months <= 0:
        return None
    return Month.of(now).plus(-(retention_months - 1))


def expired(existing: list[Month], now: datetime, retention_months: int) -> list[Month]:
    oldest_kept = retention_start(now, retention_months)
    if oldest_kept is None:
        return []
    return sorted(month for month in existing if month < oldest_kept)


class PartitionStore(Protocol):
    """What ``maintain`` needs from the store."""

    async def ensure_partitions(self, months: list[Month]) -> list[Month]: ...

    async def existing_partitions(self) -> list[Month]: ...

    async def drop_partitions(self, months: list[Month]) -> None: ...


async def maintain_once(store: PartitionStore, now: datetime, ahead: int, retention_months: int) -> None:
    created = await store.ensure_partitions(months_to_create(now, ahead))
    if created:
        log.info("usage partitions created", extra={"partitions": [m.partition_name for m in created]})
    dropped = expired(await store.existing_partitions(), now, retention_months)
    if dropped:
        await store.drop_partitions(dropped)
        log.info("usage partitions dropped", extra={"partitions": [m.partition_name for m in dropped]})


async def maintain(store: PartitionStore, ahead: int, retention_months: int, interval_seconds: float) -> None:
    """Forever: make sure the coming months have partitions and expired ones are gone."""
    while True:
        try:
            await maintain_once(store, datetime.now(UTC), ahead, retention_months)
        except Exception:  # a failed round (database restarting) is retried at the next one
            log.exception("usage partition maintenance failed; retrying later")
            await asyncio.sleep(min(interval_seconds, 30.0))
            continue
        await asyncio.sleep(interval_seconds)
