"""What goes into the usage log: the actions, how each event becomes a record, what a
client may log itself, and what personal data never gets in.

Plain Python: no I/O, tested without a network.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import message

from kit import telemetry
from kit.errors import ValidationError
from kit.events import Event, unpack
from stylestudio.billing.v1 import events_pb2 as billing_events
from stylestudio.files.v1 import events_pb2 as files_events
from stylestudio.generation.v1 import events_pb2 as generation_events
from stylestudio.generation.v1 import resources_pb2 as generation_resources
from stylestudio.users.v1 import events_pb2 as users_events

SIGNUP = "signup"
LOGIN = "login"
LOGOUT = "logout"
FILE_UPLOAD = "file_upload"
FILE_DELETE = "file_delete"
GENERATION_STARTED = "generation_started"
GENERATION_COMPLETED = "generation_completed"
GENERATION_FAILED = "generation_failed"
GENERATION_CANCELED = "generation_canceled"
# A batch's summary, once every request of it has reached an end (the seed logged it after
# processBatchGenerations): batchSize, successCount, failureCount, canceledCount.
BATCH_COMPLETED = "batch_completed"
TOKEN_PURCHASE = "token_purchase"
TOKENS_GRANTED = "tokens_granted"
TOKENS_REFUNDED = "tokens_refunded"

# The actions the services report through their events (API.md's list); clients may not log them.
SERVICE_ACTIONS = frozenset(
    {
        SIGNUP,
        LOGIN,
        LOGOUT,
        FILE_UPLOAD,
        FILE_DELETE,
        GENERATION_STARTED,
        GENERATION_COMPLETED,
        GENERATION_FAILED,
        GENERATION_CANCELED,
        BATCH_COMPLETED,
        TOKEN_PURCHASE,
        TOKENS_GRANTED,
        TOKENS_REFUNDED,
    }
)
GENERATION_ACTIONS = (GENERATION_STARTED, GENERATION_COMPLETED, GENERATION_FAILED)
CLIENT_SOURCE = "client"

_ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EMAIL = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+\.[A-Za-z]{2,}")
# Keys whose values are personal or secret whatever they hold (compared lower-case, without _ and -).
_PERSONAL_KEYS = frozenset(
    {
        "email",
        "emailaddress",
        "password",
        "name",
        "fullname",
        "firstname",
        "lastname",
        "phone",
        "phonenumber",
        "address",
        "prompt",
        "filename",
        "token",
        "accesstoken",
        "refreshtoken",
        "apikey",
        "secret",
        "ip",
        "ipaddress",
    }
)
REDACTED = "[redacted]"
# The metadata key of a sign-up's network, counted by the system analytics.
SIGNUP_NETWORK = "signupNetwork"
MAX_SESSION_ID_LENGTH = 128


@dataclass
class UsageEntry:
    """One row of the usage log, before it is written."""

    id: uuid.UUID
    created_at: datetime
    user_id: str
    action: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    model: str | None = None
    style: str | None = None
    reason: str | None = None
    tokens: int | None = None
    processing_ms: int | None = None
    # Load-test traffic (W3C baggage stylestudio.synthetic=true): kept, but left out of the
    # platform-wide analytics unless asked for.
    synthetic: bool = False

    def row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def without_personal_data(value: Any) -> Any:
    """``value`` with personal keys dropped and e-mail addresses redacted, at any depth."""
    if isinstance(value, Mapping):
        return {
            key: without_personal_data(item)
            for key, item in value.items()
            if key.lower().replace("_", "").replace("-", "") not in _PERSONAL_KEYS
        }
    if isinstance(value, list):
        return [without_personal_data(item) for item in value]
    if isinstance(value, str):
        return _EMAIL.sub(REDACTED, value) if "@" in value else value  # most strings have no "@"
    return value


# --- events -> records ----------------------------------------------------------------------

Translation = Callable[[Any, UsageEntry], None]


@dataclass(frozen=True)
class EventAction:
    action: str
    message_type: type[message.Message]
    translate: Translation


def _signup(data: users_events.UserCreated, entry: UsageEntry) -> None:
    entry.metadata = {"plan": data.plan, "signupMethod": data.signup_method}
    if data.signup_network:  # a truncated network, not an address (users/origins.py)
        entry.metadata[SIGNUP_NETWORK] = data.signup_network


def _login(data: users_events.UserLoggedIn, entry: UsageEntry) -> None:
    entry.session_id = data.session_id or None
    entry.metadata = {"method": data.method}


def _logout(data: users_events.UserLoggedOut, entry: UsageEntry) -> None:
    entry.session_id = data.session_id or None


def _file_upload(data: files_events.FileUploaded, entry: UsageEntry) -> None:
    entry.metadata = {
        "fileId": data.file_id,
        "category": data.category,
        "contentType": data.content_type,
        "size": data.size,
        "width": data.width,
        "height": data.height,
    }
    if data.generation_id:
        entry.metadata["generationId"] = data.generation_id


def _file_delete(data: files_events.FileDeleted, entry: UsageEntry) -> None:
    entry.metadata = {"fileId": data.file_id, "category": data.category, "size": data.size}


def _generation_started(data: generation_events.GenerationStarted, entry: UsageEntry) -> None:
    entry.model, entry.style = data.model or None, data.style or None
    entry.metadata = {
        "generationId": data.generation_id,
        "model": data.model,
        "style": data.style,
        "quality": data.quality,
        "aspectRatio": data.aspect_ratio,
        "numImages": data.num_images,
        "tokenCost": data.token_cost,
        "batch": data.batch,
    }


def _generation_completed(data: generation_events.GenerationCompleted, entry: UsageEntry) -> None:
    entry.model, entry.style = data.model or None, data.style or None
    entry.tokens, entry.processing_ms = data.token_cost, data.processing_time_ms
    entry.metadata = {
        "generationId": data.generation_id,
        "model": data.model,
        "style": data.style,
        "tokenCost": data.token_cost,
        "processingTimeMs": data.processing_time_ms,
        "resultFileIds": list(data.result_file_ids),
    }


def _generation_failed(data: generation_events.GenerationFailed, entry: UsageEntry) -> None:
    entry.model, entry.style, entry.reason = data.model or None, data.style or None, data.reason or None
    entry.processing_ms = data.processing_time_ms
    entry.metadata = {
        "generationId": data.generation_id,
        "reason": data.reason,
        "model": data.model,
        "style": data.style,
        "processingTimeMs": data.processing_time_ms,
    }
    if data.message:  # the generation service leaves the prompt out of it
        entry.metadata["message"] = data.message


def _batch_completed(data: generation_events.GenerationBatchCompleted, entry: UsageEntry) -> None:
    entry.metadata = {
        "batchId": data.batch_id,
        "batchSize": data.batch_size,
        "successCount": data.success_count,
        "failureCount": data.failure_count,
        "canceledCount": data.canceled_count,
        "generationIds": list(data.generation_ids),
    }


def _generation_canceled(data: generation_events.GenerationCanceled, entry: UsageEntry) -> None:
    previous = generation_resources.GenerationStatus.Name(data.previous_status)
    entry.metadata = {"generationId": data.generation_id, "previousStatus": previous}


def _token_purchase(data: billing_events.TokenPurchaseCompleted, entry: UsageEntry) -> None:
    entry.tokens = data.tokens
    entry.metadata = {
        "purchaseId": data.purchase_id,
        "packageName": data.package_name,
        "tokens": data.tokens,
        "amountCents": data.amount_cents,
        "currency": data.currency,
    }


def _tokens_granted(data: billing_events.TokensGranted, entry: UsageEntry) -> None:
    entry.tokens = data.amount
    entry.metadata = {
        "transactionId": data.transaction_id,
        "amount": data.amount,
        "balanceAfter": data.balance_after,
        "reason": data.reason,
        "grantedBy": data.granted_by,
    }


def _tokens_refunded(data: billing_events.TokensRefunded, entry: UsageEntry) -> None:
    entry.tokens = data.tokens
    entry.metadata = {
        "purchaseId": data.purchase_id,
        "tokens": data.tokens,
        "shortfall": data.shortfall,
        "amountCents": data.amount_cents,
        "currency": data.currency,
    }


# stream -> event type -> how it is recorded
EVENT_ACTIONS: dict[str, dict[str, EventAction]] = {
    "events.users": {
        "user.created": EventAction(SIGNUP, users_events.UserCreated, _signup),
        "user.logged_in": EventAction(LOGIN, users_events.UserLoggedIn, _login),
        "user.logged_out": EventAction(LOGOUT, users_events.UserLoggedOut, _logout),
    },
    "events.files": {
        "files.file_uploaded": EventAction(FILE_UPLOAD, files_events.FileUploaded, _file_upload),
        "files.file_deleted": EventAction(FILE_DELETE, files_events.FileDeleted, _file_delete),
    },
    "events.generation": {
        "generation.started": EventAction(
            GENERATION_STARTED, generation_events.GenerationStarted, _generation_started
        ),
        "generation.completed": EventAction(
            GENERATION_COMPLETED, generation_events.GenerationCompleted, _generation_completed
        ),
        "generation.failed": EventAction(
            GENERATION_FAILED, generation_events.GenerationFailed, _generation_failed
        ),
        "generation.canceled": EventAction(
            GENERATION_CANCELED, generation_events.GenerationCanceled, _generation_canceled
        ),
        "generation.batch_completed": EventAction(
            BATCH_COMPLETED, generation_events.GenerationBatchCompleted, _batch_completed
        ),
    },
    "events.billing": {
        "billing.token_purchase_completed": EventAction(
            TOKEN_PURCHASE, billing_events.TokenPurchaseCompleted, _token_purchase
        ),
        "billing.tokens_granted": EventAction(TOKENS_GRANTED, billing_events.TokensGranted, _tokens_granted),
        "billing.tokens_refunded": EventAction(
            TOKENS_REFUNDED, billing_events.TokensRefunded, _tokens_refunded
        ),
    },
}
_BY_TYPE = {
    event_type: action for actions in EVENT_ACTIONS.values() for event_type, action in actions.items()
}


def entry_from_event(event: Event, now: datetime, max_clock_skew: timedelta) -> UsageEntry:
    """The record of ``event``: its id is the event id and its time the event's ``occurred_at``.

    Raises ValueError for an event this log does not know or whose data does not match its type.
    """
    known = _BY_TYPE.get(event.type)
    if known is None:
        raise ValueError(f"event type {event.type!r} is not recorded in the usage log")
    data = unpack(event, known.message_type)
    occurred = event.occurred_at.ToDatetime(UTC) if event.HasField("occurred_at") else now
    # A clock far ahead would create partitions for nothing; such an event is recorded on arrival.
    if occurred > now + max_clock_skew:
        occurred = now
    entry = UsageEntry(
        id=uuid.UUID(event.id),
        created_at=occurred,
        user_id=getattr(data, "user_id", "") or event.user_id,
        action=known.action,
        source=event.source,
        synthetic=telemetry.baggage_is_synthetic(event.baggage),
    )
    known.translate(data, entry)
    entry.metadata = without_personal_data(entry.metadata)
    return entry


# --- what clients log themselves --------------------------------------------------------------


def validate_client_action(action: str, allowed: frozenset[str]) -> str:
    if not action:
        raise ValidationError("action is required", field="action")
    if not _ACTION_NAME.match(action):
        raise ValidationError("action must be lower snake case, at most 64 characters", field="action")
    if action in SERVICE_ACTIONS:
        raise ValidationError(f"{action!r} is recorded by the services themselves", field="action")
    if action not in allowed:
        raise ValidationError(f"Unknown action {action!r}", field="action", details={"action": action})
    return action


def validate_client_metadata(metadata: Mapping[str, Any], max_bytes: int) -> dict[str, Any]:
    encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > max_bytes:
        raise ValidationError(
            f"metadata is {len(encoded)} bytes once encoded; at most {max_bytes}",
            field="metadata",
            details={"max_bytes": max_bytes},
        )
    return without_personal_data(dict(metadata))  # type: ignore[no-any-return]


def validate_session_id(session_id: str) -> str | None:
    if len(session_id) > MAX_SESSION_ID_LENGTH:
        raise ValidationError(
            f"session_id is longer than {MAX_SESSION_ID_LENGTH} characters", field="session_id"
        )
    return session_id or None
