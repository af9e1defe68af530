"""The audit log: security events every service records (kit/audit.py), kept here for admins.

The events arrive as ``audit.recorded`` on each service's stream; each becomes one row whose
id is the event id, so a redelivered event is stored once. They are read newest first
(``ListAuditEvents``, GET /v1/admin/audit) and deleted ``audit_retention_days`` after they
happened by ``purge``, the service's background loop. Plain Python here; SQL in audit_store.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from kit import audit
from kit.errors import ValidationError
from kit.events import Event, unpack
from stylestudio.common.v1 import audit_pb2

log = logging.getLogger("stylestudio.analytics.audit")

# Streams whose services record audit events (every service may: kit/audit.py).
AUDIT_STREAMS = ("events.users", "events.billing", "events.files", "events.generation")
_ACTION_FILTER = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_ACTOR_FILTER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_USER_AGENT_MAX = audit.USER_AGENT_MAX_LENGTH


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: uuid.UUID
    created_at: datetime
    action: str
    actor: str
    acting_service: str = ""
    target: str = ""
    client_address: str | None = None
    user_agent: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def row(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(),
            "action": self.action,
            "actor": self.actor,
            "acting_service": self.acting_service,
            "target": self.target,
            "client_address": self.client_address,
            "user_agent": self.user_agent,
            "details": dict(self.details),
            "source": self.source,
        }

    @property
    def shown_details(self) -> dict[str, str]:
        """The details an admin reads: the event's, and the service that acted for the actor."""
        shown = dict(self.details)
        if self.acting_service:
            shown["actingService"] = self.acting_service
        return shown


def entry_from_event(event: Event, now: datetime, max_clock_skew: timedelta) -> AuditEntry:
    """The row of an ``audit.recorded`` event; ValueError if its data is not an AuditRecorded."""
    data = unpack(event, audit_pb2.AuditRecorded)
    assert isinstance(data, audit_pb2.AuditRecorded)
    occurred = event.occurred_at.ToDatetime(UTC) if event.HasField("occurred_at") else now
    if occurred > now + max_clock_skew:  # a clock far ahead: recorded at arrival
        occurred = now
    actor = data.actor_user_id or data.actor_service
    return AuditEntry(
        id=uuid.UUID(event.id),
        created_at=occurred,
        action=data.action,
        actor=actor,
        acting_service=data.actor_service if data.actor_user_id else "",
        target=data.target,
        client_address=_address(data.client_address),
        user_agent=data.user_agent[:_USER_AGENT_MAX] or None,
        details=dict(data.details),
        source=event.source,
    )


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return None


def validate_filters(actor: str, action: str) -> None:
    if actor and not _ACTOR_FILTER.match(actor):
        raise ValidationError("actor must be a user id or a service identity", field="actor")
    if action and not _ACTION_FILTER.match(action):
        raise ValidationError(
            "action must be lower case, dotted, at most 64 characters (e.g. auth.login_failed)",
            field="action",
        )


def retention_cutoff(now: datetime, retention_days: int) -> datetime | None:
    """Events before this moment are past the retention; None when kept forever (0)."""
    return now - timedelta(days=retention_days) if retention_days > 0 else None


class PurgingStore(Protocol):
    async def purge_audit_events(self, before: datetime) -> int: ...


async def purge_once(store: PurgingStore, now: datetime, retention_days: int) -> int:
    cutoff = retention_cutoff(now, retention_days)
    if cutoff is None:
        return 0
    deleted = await store.purge_audit_events(cutoff)
    if deleted:
        log.info("audit events past the retention deleted", extra={"count": deleted})
    return deleted


async def purge(store: PurgingStore, retention_days: int, interval_seconds: float) -> None:
    """Forever: delete the audit events older than the retention."""
    while True:
        try:
            await purge_once(store, datetime.now(UTC), retention_days)
        except Exception:  # the database restarting: retried at the next round
            log.exception("audit log purge failed; retrying later")
            await asyncio.sleep(min(interval_seconds, 30.0))
            continue
        await asyncio.sleep(interval_seconds)
