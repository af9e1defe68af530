"""Purchases and refunds through the official stripe SDK against a local Stripe-format server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from stylestudio.billing.v1 import billing_pb2, resources_pb2
from tests.billing.conftest import WEBHOOK_SECRET, Billing, bearer, start_billing, stop_billing
from tests.billing.stripe_server import LocalStripe
from tests.harness import free_port

API_KEY = "sk_test_" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def stripe_server() -> AsyncIterator[LocalStripe]:
    server = LocalStripe(API_KEY, WEBHOOK_SECRET, free_port())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def stripe_billing(infrastructure, redis_url, stripe_server: LocalStripe) -> AsyncIterator[Billing]:
    running = await start_billing(
        infrastructure,
        redis_url,
        stripe_api_key=API_KEY,
        stripe_api_base=stripe_server.url,
        stripe_max_network_retries=0,
    )
    stripe_server.deliver = running.webhook_raw
    yield running
    await stop_billing(running)


async def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_purchase_creates_a_payment_intent_and_stripe_s_confirmation_credits_it(
    stripe_billing: Billing, stripe_server: LocalStripe
) -> None:
    public = stripe_billing.user_stub()
    _, token = stripe_billing.token()
    metadata = (*bearer(token), ("idempotency-key", "stripe-buy-1"))
    request = billing_pb2.CreatePurchaseRequest(package_name="standard")
    created = await public.CreatePurchase(request, metadata=metadata)
    again = await public.CreatePurchase(request, metadata=metadata)

    intent = stripe_server.intents[created.purchase.payment_intent_id]
    assert (intent["amount"], intent["currency"]) == (999, "usd")
    assert intent["metadata"]["purchase_id"] == created.purchase.id
    assert created.client_secret == again.client_secret == intent["client_secret"]
    assert stripe_server.idempotency_keys[-2:] == [f"purchase:{created.purchase.id}"] * 2
    assert (
        len(
            [i for i in stripe_server.intents.values() if i["metadata"]["purchase_id"] == created.purchase.id]
        )
        == 1
    )

    await stripe_server.confirm(created.purchase.payment_intent_id)
    balance = await public.GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
    assert balance.balance == 50

    _, admin = stripe_billing.token(role="admin")
    refund = billing_pb2.RefundPurchaseRequest(id=created.purchase.id, reason="duplicate order")
    answered = await public.RefundPurchase(refund, metadata=bearer(admin))
    assert answered.status in (resources_pb2.COMPLETED, resources_pb2.REFUNDED)
    assert stripe_server.refunds[-1]["payment_intent"] == created.purchase.payment_intent_id

    async def refunded() -> bool:
        listed = await public.ListPurchases(billing_pb2.ListPurchasesRequest(), metadata=bearer(token))
        return listed.purchases[0].status == resources_pb2.REFUNDED

    await wait_for(refunded)
    balance = await public.GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
    assert balance.balance == 0


async def test_stripe_being_down_is_provider_unavailable_and_a_retry_completes_the_purchase(
    stripe_billing: Billing, stripe_server: LocalStripe
) -> None:
    public = stripe_billing.user_stub()
    _, token = stripe_billing.token()
    metadata = (*bearer(token), ("idempotency-key", "stripe-down"))
    request = billing_pb2.CreatePurchaseRequest(package_name="starter")
    stripe_server.failing = True
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await public.CreatePurchase(request, metadata=metadata)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stripe_server.failing = False
    created = await public.CreatePurchase(request, metadata=metadata)
    assert created.purchase.payment_intent_id.startswith("pi_") and created.client_secret
    listed = await public.ListPurchases(billing_pb2.ListPurchasesRequest(), metadata=bearer(token))
    assert [p.id for p in listed.purchases] == [created.purchase.id]
