"""Real event envelopes, as the other services' outboxes write them (tests only)."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf import message

from kit.events import Event
from stylestudio.billing.v1 import events_pb2 as billing
from stylestudio.files.v1 import events_pb2 as files
from stylestudio.generation.v1 import events_pb2 as generation
from stylestudio.generation.v1 import resources_pb2 as generation_resources
from stylestudio.users.v1 import events_pb2 as users


def envelope(
    event_type: str, data: message.Message, user_id: str, occurred_at: datetime | None = None
) -> Event:
    event = Event(id=str(uuid.uuid4()), type=event_type, source=event_type.split(".")[0], user_id=user_id)
    if event.source == "user":
        event.source = "users"
    if occurred_at is None:
        event.occurred_at.GetCurrentTime()
    else:
        event.occurred_at.FromDatetime(occurred_at)
    event.data.Pack(data)
    return event


def every_action(user_id: str) -> dict[str, tuple[str, Event]]:
    """action -> (stream, event) for each of the twelve actions the services report."""
    generation_id, purchase_id = str(uuid.uuid4()), str(uuid.uuid4())
    u = user_id
    return {
        "signup": (
            "events.users",
            envelope(
                "user.created",
                users.UserCreated(
                    user_id=u, plan="free", signup_method="password", signup_network="198.51.100.0/24"
                ),
                u,
            ),
        ),
        "login": (
            "events.users",
            envelope("user.logged_in", users.UserLoggedIn(user_id=u, session_id="s-1", method="password"), u),
        ),
        "logout": (
            "events.users",
            envelope("user.logged_out", users.UserLoggedOut(user_id=u, session_id="s-1"), u),
        ),
        "file_upload": (
            "events.files",
            envelope(
                "files.file_uploaded",
                files.FileUploaded(
                    user_id=u, file_id="f-1", category="product_image", content_type="image/png", size=1234
                ),
                u,
            ),
        ),
        "file_delete": (
            "events.files",
            envelope("files.file_deleted", files.FileDeleted(user_id=u, file_id="f-1", category="avatar"), u),
        ),
        "generation_started": (
            "events.generation",
            envelope(
                "generation.started",
                generation.GenerationStarted(
                    user_id=u, generation_id=generation_id, model="dall-e-3", style="studio", token_cost=2
                ),
                u,
            ),
        ),
        "generation_completed": (
            "events.generation",
            envelope(
                "generation.completed",
                generation.GenerationCompleted(
                    user_id=u,
                    generation_id=generation_id,
                    processing_time_ms=1500,
                    token_cost=2,
                    model="dall-e-3",
                    style="studio",
                ),
                u,
            ),
        ),
        "generation_failed": (
            "events.generation",
            envelope(
                "generation.failed",
                generation.GenerationFailed(
                    user_id=u,
                    generation_id=str(uuid.uuid4()),
                    reason="PROVIDER_UNAVAILABLE",
                    model="midjourney",
                ),
                u,
            ),
        ),
        "generation_canceled": (
            "events.generation",
            envelope(
                "generation.canceled",
                generation.GenerationCanceled(
                    user_id=u, generation_id=str(uuid.uuid4()), previous_status=generation_resources.QUEUED
                ),
                u,
            ),
        ),
        "batch_completed": (
            "events.generation",
            envelope(
                "generation.batch_completed",
                generation.GenerationBatchCompleted(
                    user_id=u,
                    batch_id=str(uuid.uuid4()),
                    batch_size=3,
                    success_count=1,
                    failure_count=2,
                    generation_ids=[generation_id],
                ),
                u,
            ),
        ),
        "token_purchase": (
            "events.billing",
            envelope(
                "billing.token_purchase_completed",
                billing.TokenPurchaseCompleted(
                    user_id=u, purchase_id=purchase_id, package_name="starter", tokens=10, amount_cents=299
                ),
                u,
            ),
        ),
        "tokens_granted": (
            "events.billing",
            envelope(
                "billing.tokens_granted",
                billing.TokensGranted(
                    user_id=u, transaction_id="t-1", amount=10, reason="welcome (ask jane.doe@example.com)"
                ),
                u,
            ),
        ),
        "tokens_refunded": (
            "events.billing",
            envelope(
                "billing.tokens_refunded",
                billing.TokensRefunded(user_id=u, purchase_id=purchase_id, tokens=7, shortfall=3),
                u,
            ),
        ),
    }
