"""The billing service in-process on a database of its own; user tokens are real ES256 JWTs
checked against a local JWKS, internal RPCs use a real service credential."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.api import httpbody_pb2

from services.billing.__main__ import definition
from services.billing.ledger import Ledger
from services.billing.payments import sign_payload
from services.billing.settings import BillingSettings
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.harness.in_process import InProcessService, start_in_process

WEBHOOK_SECRET = "whsec_test_" + uuid.uuid4().hex


class Billing(InProcessService):
    """The billing service in-process, with its ledger and webhook delivery at hand."""

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.service.runtime.db, self.service.runtime.outbox, self.settings)  # type: ignore[union-attr]

    def user_stub(self) -> billing_pb2_grpc.BillingServiceStub:
        return billing_pb2_grpc.BillingServiceStub(self.channel(as_service=False))

    def service_stub(self) -> billing_pb2_grpc.BillingServiceStub:
        return billing_pb2_grpc.BillingServiceStub(self.channel(as_service=True))

    async def webhook(self, payload: bytes | dict[str, Any], signature: str | None = None) -> None:
        """Deliver a Stripe event the way the gateway does: raw body + stripe-signature metadata."""
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        header = sign_payload(body, WEBHOOK_SECRET) if signature is None else signature
        await self.user_stub().HandleStripeWebhook(
            billing_pb2.HandleStripeWebhookRequest(
                http_body=httpbody_pb2.HttpBody(content_type="application/json", data=body)
            ),
            metadata=(("stripe-signature", header),),
        )

    async def webhook_raw(self, payload: bytes, signature: str) -> None:
        await self.webhook(payload, signature)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def start_billing(infrastructure: object, redis_url: str, **overrides: Any) -> Billing:
    options: dict[str, Any] = {
        "outbox_poll_interval_seconds": 0.2,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "hold_sweep_interval_seconds": 0.2,
        "db_pool_size": 20,
    }
    parts = await start_in_process(
        "billing", infrastructure, redis_url, BillingSettings, definition, **(options | overrides)
    )
    return Billing(*parts)


async def stop_billing(billing: Billing) -> None:
    await billing.stop()


@pytest.fixture(scope="package")
async def billing(infrastructure: object, redis_url: str) -> AsyncIterator[Billing]:
    """One billing service (offline payments mode) for the package."""
    running = await start_billing(infrastructure, redis_url)
    yield running
    await stop_billing(running)


@pytest.fixture
def internal(billing: Billing) -> billing_pb2_grpc.BillingServiceStub:
    """A stub presenting a service credential: the internal RPCs' callers."""
    return billing.service_stub()


@pytest.fixture
def public(billing: Billing) -> billing_pb2_grpc.BillingServiceStub:
    """A stub with no credential of its own: pass a user's token with bearer()."""
    return billing.user_stub()


async def fund(internal: billing_pb2_grpc.BillingServiceStub, tokens: int, user_id: str | None = None) -> str:
    """A user with exactly ``tokens`` tokens (granted)."""
    user_id = user_id or str(uuid.uuid4())
    await internal.GrantTokens(
        billing_pb2.GrantTokensRequest(
            user_id=user_id, amount=tokens, reason="test funds", idempotency_key=f"test-fund:{uuid.uuid4()}"
        )
    )
    return user_id
