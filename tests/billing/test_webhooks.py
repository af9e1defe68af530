"""Purchases in offline payments mode and Stripe webhooks: verified, recorded, once in effect."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

import grpc
import pytest

from services.billing import store
from services.billing.payments import (
    charge_refunded_event,
    payment_intent_object,
    sign_payload,
    stripe_event,
)
from stylestudio.billing.v1 import billing_pb2, resources_pb2
from tests.billing.conftest import WEBHOOK_SECRET, bearer
from tests.harness.platform import REPO_ROOT


async def buy(billing, public, package: str = "starter", key: str | None = None):  # type: ignore[no-untyped-def]
    user_id, token = billing.token()
    metadata = (*bearer(token), ("idempotency-key", key or str(uuid.uuid4())))
    created = await public.CreatePurchase(
        billing_pb2.CreatePurchaseRequest(package_name=package), metadata=metadata
    )
    return user_id, token, created


def as_row(purchase: resources_pb2.Purchase) -> dict[str, object]:
    return {
        "id": purchase.id,
        "package_name": purchase.package_name,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "payment_intent_id": purchase.payment_intent_id,
    }


def succeeded(purchase: resources_pb2.Purchase) -> dict[str, object]:
    return stripe_event("payment_intent.succeeded", payment_intent_object(as_row(purchase), "succeeded"))


def failed(purchase: resources_pb2.Purchase) -> dict[str, object]:
    intent = payment_intent_object(as_row(purchase), "requires_payment_method", "card_declined")
    return stripe_event("payment_intent.payment_failed", intent)


async def state(public, token: str):  # type: ignore[no-untyped-def]
    balance = await public.GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
    purchases = await public.ListPurchases(billing_pb2.ListPurchasesRequest(), metadata=bearer(token))
    return balance.balance, [resources_pb2.PurchaseStatus.Name(p.status) for p in purchases.purchases]


async def test_a_purchase_is_pending_with_a_local_payment_intent(billing, public) -> None:
    _, token, created = await buy(billing, public, "standard")
    assert created.purchase.status == resources_pb2.PENDING
    assert (created.purchase.tokens, created.purchase.amount_cents) == (50, 999)
    assert created.purchase.payment_intent_id.startswith("pi_offline_")
    assert created.client_secret.startswith(created.purchase.payment_intent_id + "_secret_")
    assert await state(public, token) == (0, ["PENDING"])


async def test_the_same_idempotency_key_returns_the_same_purchase(billing, public) -> None:
    _, token = billing.token()
    metadata = (*bearer(token), ("idempotency-key", "buy-once"))
    request = billing_pb2.CreatePurchaseRequest(package_name="pro")
    first = await public.CreatePurchase(request, metadata=metadata)
    second = await public.CreatePurchase(request, metadata=metadata)
    assert first.purchase.id == second.purchase.id and first.client_secret == second.client_secret
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.CreatePurchase(
            billing_pb2.CreatePurchaseRequest(package_name="starter"), metadata=metadata
        )
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.CreatePurchase(
            billing_pb2.CreatePurchaseRequest(package_name="gold"), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_valid_success_credits_once_even_when_delivered_again(billing, public) -> None:
    _, token, created = await buy(billing, public)
    event = succeeded(created.purchase)
    await billing.webhook(event)
    await billing.webhook(event)  # Stripe retries the same event
    await billing.webhook(succeeded(created.purchase))  # another success event for the same intent
    assert await state(public, token) == (10, ["COMPLETED"])


@pytest.mark.parametrize(
    "signature",
    [
        "t=1700000000,v1=" + "0" * 64,  # wrong signature
        sign_payload(b"{}", "whsec_someone_else"),  # signed with another secret
        "nonsense",
        "",
    ],
)
async def test_a_bad_signature_is_refused_and_credits_nothing(billing, public, signature: str) -> None:
    _, token, created = await buy(billing, public)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(succeeded(created.purchase), signature=signature)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await state(public, token) == (0, ["PENDING"])


async def test_a_stale_timestamp_is_refused(billing, public) -> None:
    _, token, created = await buy(billing, public)
    body = json.dumps(succeeded(created.purchase)).encode()
    stale = sign_payload(body, WEBHOOK_SECRET, timestamp=int(time.time()) - 3600)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(body, signature=stale)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await state(public, token) == (0, ["PENDING"])


@pytest.mark.parametrize("body", [b"this is not json", b"\xff\xfe\x00", b"[1, 2]", b'{"id": "evt_1"}', b""])
async def test_a_signed_body_that_is_not_a_stripe_event_is_a_400_not_a_500(billing, body: bytes) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(body)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_event_for_an_unknown_purchase_is_acknowledged_and_changes_nothing(billing, public) -> None:
    _, token, created = await buy(billing, public)
    stranger = as_row(created.purchase) | {"id": str(uuid.uuid4()), "payment_intent_id": "pi_unknown"}
    await billing.webhook(
        stripe_event("payment_intent.succeeded", payment_intent_object(stranger, "succeeded"))
    )
    await billing.webhook(stripe_event("customer.created", {"id": "cus_1", "object": "customer"}))
    assert await state(public, token) == (0, ["PENDING"])


async def test_a_failure_after_a_success_does_not_undo_the_credit(billing, public) -> None:
    _, token, created = await buy(billing, public)
    await billing.webhook(succeeded(created.purchase))
    await billing.webhook(failed(created.purchase))
    assert await state(public, token) == (10, ["COMPLETED"])


async def test_a_success_after_a_failure_credits_once(billing, public) -> None:
    _, token, created = await buy(billing, public)
    await billing.webhook(failed(created.purchase))
    assert await state(public, token) == (0, ["FAILED"])
    await billing.webhook(succeeded(created.purchase))
    assert await state(public, token) == (10, ["COMPLETED"])


async def test_a_failure_keeps_stripes_message_until_a_success_clears_it(billing, public) -> None:
    _, token, created = await buy(billing, public)
    intent = payment_intent_object(
        as_row(created.purchase), "requires_payment_method", "card_declined", "Your card was declined."
    )
    control = intent | {
        "last_payment_error": {"code": "card_declined", "message": "Your card\nwas declined."}
    }
    with pytest.raises(grpc.aio.AioRpcError) as refused:  # one printable line, or not Stripe's
        await billing.webhook(stripe_event("payment_intent.payment_failed", control))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await billing.webhook(stripe_event("payment_intent.payment_failed", intent))
    request = billing_pb2.GetPurchaseRequest(id=created.purchase.id)
    failed_purchase = await public.GetPurchase(request, metadata=bearer(token))
    assert (failed_purchase.failure_reason, failed_purchase.failure_code) == (
        "Your card was declined.",
        "card_declined",
    )
    await billing.webhook(succeeded(created.purchase))  # paid with another card
    paid = await public.GetPurchase(request, metadata=bearer(token))
    assert paid.status == resources_pb2.COMPLETED and not paid.failure_reason and not paid.failure_code
    assert paid.HasField("completed_at") and not failed_purchase.HasField("completed_at")


async def test_a_refund_that_arrives_before_the_success_means_nothing_is_credited(billing, public) -> None:
    _, token, created = await buy(billing, public)
    await billing.webhook(charge_refunded_event(as_row(created.purchase)))
    await billing.webhook(succeeded(created.purchase))
    assert await state(public, token) == (0, ["REFUNDED"])


async def test_a_refund_takes_back_only_what_is_available_and_records_the_shortfall(
    billing, public, internal
) -> None:
    user_id, token, created = await buy(billing, public)
    await billing.webhook(succeeded(created.purchase))
    await internal.ReserveTokens(
        billing_pb2.ReserveTokensRequest(
            user_id=user_id, amount=7, generation_id="g1", idempotency_key=f"h:{user_id}"
        )
    )
    refund = charge_refunded_event(as_row(created.purchase))
    await billing.webhook(refund)
    await billing.webhook(refund)
    balance = await public.GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
    assert (balance.balance, balance.reserved, balance.available) == (7, 7, 0)
    events = [e for e in await billing.stream("events.billing") if e.type == "billing.tokens_refunded"]
    for _ in range(30):
        if any(e.user_id == user_id for e in events):
            break
        await asyncio.sleep(0.1)
        events = [e for e in await billing.stream("events.billing") if e.type == "billing.tokens_refunded"]
    from stylestudio.billing.v1 import events_pb2

    refunded = events_pb2.TokensRefunded()
    next(e for e in events if e.user_id == user_id).data.Unpack(refunded)
    assert (refunded.tokens, refunded.shortfall) == (3, 7)


async def test_admins_refund_a_completed_purchase(billing, public) -> None:
    _, token, created = await buy(billing, public)
    _, admin = billing.token(role="admin")
    refund = billing_pb2.RefundPurchaseRequest(id=created.purchase.id, reason="customer asked")
    with pytest.raises(grpc.aio.AioRpcError) as failure:  # still PENDING
        await public.RefundPurchase(refund, metadata=bearer(admin))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await billing.webhook(succeeded(created.purchase))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.RefundPurchase(refund, metadata=bearer(token))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    refunded = await public.RefundPurchase(refund, metadata=bearer(admin))
    assert refunded.status == resources_pb2.REFUNDED  # offline: the signed charge.refunded is handled at once
    assert await state(public, token) == (0, ["REFUNDED"])


async def test_the_offline_confirm_command_posts_a_signed_success(billing, public) -> None:
    _, token, created = await buy(billing, public, "standard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESTUDIO_")} | {
        "STYLESTUDIO_ENVIRONMENT": "development",  # production refuses offline confirmations
        "STYLESTUDIO_SERVICE_DATABASE_URL": billing.settings.service_database_url or "",
        "STYLESTUDIO_BILLING_ADDR": billing.settings.billing_addr,
        "STYLESTUDIO_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    command = [sys.executable, "-m", "services.billing.payments", "confirm", created.purchase.id, "--grpc"]
    process = await _run(command, env)
    assert process.returncode == 0, process.stderr
    assert await state(public, token) == (50, ["COMPLETED"])


async def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


# --- what a signed event must be to move money ---


def _signed_succeeded(purchase: resources_pb2.Purchase, **intent_changes: object) -> dict[str, object]:
    intent = payment_intent_object(as_row(purchase), "succeeded") | intent_changes
    return stripe_event("payment_intent.succeeded", intent)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_received": "299"},
        {"amount_received": [299]},
        {"amount_received": {"value": 299}},
        {"amount_received": True},
        {"amount_received": 299.5},
        {"amount_received": -1},
        {"amount_received": 10**30},
        {"id": "pi_\u0000nul"},
        {"currency": ["usd"]},
        {"metadata": {"purchase_id": 7}},
        {"metadata": "not an object"},
        {"last_payment_error": {"code": "a\u0000b"}},
    ],
    ids=lambda changes: f"{next(iter(changes))}={next(iter(changes.values()))!r}"[:40],
)
async def test_a_signed_event_with_the_wrong_json_types_is_a_validation_error(
    billing, public, changes: dict[str, object]
) -> None:
    _, token, created = await buy(billing, public)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(_signed_succeeded(created.purchase, **changes))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    field = next(iter(changes))
    assert f"data.object.{field}" in failure.value.details()
    assert await state(public, token) == (0, ["PENDING"])


@pytest.mark.parametrize(
    "envelope_changes",
    [{"id": "evt_\u0000nul"}, {"id": 12345}, {"type": "payment_intent.\u0000"}, {"data": []}, {"data": {}}],
    ids=["id-nul", "id-int", "type-nul", "data-list", "data-no-object"],
)
async def test_a_signed_event_envelope_with_the_wrong_types_is_a_validation_error(
    billing, public, envelope_changes: dict[str, object]
) -> None:
    _, token, created = await buy(billing, public)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(_signed_succeeded(created.purchase) | envelope_changes)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await state(public, token) == (0, ["PENDING"])


@pytest.mark.parametrize("where", ["data.object.metadata", "an unknown field", "the body itself"])
async def test_a_signed_event_nested_5000_levels_deep_is_refused_not_a_crash(billing, public, where) -> None:
    _, token, created = await buy(billing, public)
    deep = "[" * 5000 + "]" * 5000
    event = json.dumps(_signed_succeeded(created.purchase))
    if where == "data.object.metadata":
        body = event.replace('"metadata": {', f'"metadata": {{"deep": {deep}, ', 1)
    elif where == "an unknown field":
        body = event[:-1] + f', "extra": {deep}}}'
    else:
        body = deep
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await billing.webhook(body.encode())
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested" in failure.value.details()
    assert await state(public, token) == (0, ["PENDING"])


async def test_a_success_for_another_payment_intent_credits_nothing(billing, public) -> None:
    _, token, created = await buy(billing, public)
    # The metadata names the purchase, but the PaymentIntent is not the one recorded for it.
    await billing.webhook(_signed_succeeded(created.purchase, id="pi_someone_else_s_intent"))
    assert await state(public, token) == (0, ["PENDING"])
    # And the purchase's own intent, with the metadata of another purchase, credits neither.
    _, other_token, other = await buy(billing, public)
    borrowed = {"purchase_id": other.purchase.id, "package_name": "starter"}
    await billing.webhook(_signed_succeeded(created.purchase, metadata=borrowed))
    assert await state(public, token) == (0, ["PENDING"])
    assert await state(public, other_token) == (0, ["PENDING"])
    # The real one still credits.
    await billing.webhook(succeeded(created.purchase))
    assert await state(public, token) == (10, ["COMPLETED"])


async def test_a_failure_or_refund_for_another_payment_intent_changes_nothing(billing, public) -> None:
    _, token, created = await buy(billing, public)
    intent = payment_intent_object(as_row(created.purchase), "requires_payment_method", "card_declined")
    await billing.webhook(stripe_event("payment_intent.payment_failed", intent | {"id": "pi_not_this_one"}))
    assert await state(public, token) == (0, ["PENDING"])
    await billing.webhook(succeeded(created.purchase))
    refund = charge_refunded_event(as_row(created.purchase))
    refund["data"]["object"]["payment_intent"] = "pi_not_this_one"  # type: ignore[index]
    await billing.webhook(refund)
    assert await state(public, token) == (10, ["COMPLETED"])


@pytest.mark.parametrize(
    "changes",
    [{"amount_received": 0}, {"amount_received": 298}, {"currency": "eur"}],
    ids=["nothing-received", "one-cent-short", "other-currency"],
)
async def test_a_success_that_did_not_receive_the_price_credits_nothing_and_fails_the_purchase(
    billing, public, changes: dict[str, object]
) -> None:
    _, token, created = await buy(billing, public)  # starter: 299 usd
    await billing.webhook(_signed_succeeded(created.purchase, **changes))
    assert await state(public, token) == (0, ["FAILED"])
    async with billing.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        row = await store.purchase(session, uuid.UUID(created.purchase.id))
    assert row is not None and row["failure_code"] == "underpaid"


async def test_a_success_that_received_the_price_credits_the_package_once(billing, public) -> None:
    _, token, created = await buy(billing, public)
    await billing.webhook(_signed_succeeded(created.purchase, amount_received=299))
    assert await state(public, token) == (10, ["COMPLETED"])
