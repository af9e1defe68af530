"""API.md's billing routes end to end: real users signed up through the REST gateway, the welcome
grant through billing's user.created consumer, purchases confirmed by the offline command posting a
signed payment_intent.succeeded to the gateway's /webhooks/stripe, admin grants."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from services.billing.payments import payment_intent_object, sign_payload, stripe_event
from services.billing.settings import BillingSettings
from tests.harness import Platform
from tests.harness.platform import REPO_ROOT

PASSWORD = "correct horse battery staple"
WELCOME_TOKENS = 10  # billing's default, API.md's "10 tokens on sign-up"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign_up(gateway: httpx.AsyncClient) -> tuple[str, str, str]:
    """``(user id, email, access token)`` of a new user signed up through the gateway."""
    email = f"billing-{uuid.uuid4().hex[:12]}@example.com"
    response = await gateway.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "B"})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["user"]["id"], email, body["accessToken"]


async def balance(gateway: httpx.AsyncClient, token: str) -> dict[str, int]:
    response = await gateway.get("/v1/billing/balance", headers=bearer(token))
    assert response.status_code == 200, response.text
    # int64 fields are JSON strings in the proto3 mapping; absent means zero.
    return {key: int(response.json().get(key, 0)) for key in ("balance", "reserved", "available")}


async def wait_for_balance(gateway: httpx.AsyncClient, token: str, expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while (current := await balance(gateway, token))["balance"] != expected:
        assert time.monotonic() < deadline, f"balance stayed {current}, expected {expected}"
        await asyncio.sleep(0.1)
    return current


async def run_module(platform: Platform, env_of: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A command of the platform run as an operator would, with that process's environment."""
    command = [sys.executable, "-m", *args]
    return await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=REPO_ROOT,
        env=platform.env(env_of),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
async def admin_token(platform: Platform, gateway: httpx.AsyncClient) -> str:
    """A real admin: signed up, promoted with the users admin command, logged in again."""
    _, email, _ = await sign_up(gateway)
    promoted = await run_module(platform, "users", "services.users.admin", "promote", "--email", email)
    assert promoted.returncode == 0, promoted.stderr
    login = await gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return str(login.json()["accessToken"])


@pytest.fixture(scope="module")
async def gateway(platform: Platform) -> Any:  # module-scoped: the admin fixture shares it
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30.0) as client:
        yield client


async def test_a_new_user_gets_the_welcome_grant_and_reads_packages_and_estimates(
    gateway: httpx.AsyncClient,
) -> None:
    _, _, token = await sign_up(gateway)
    assert await wait_for_balance(gateway, token, WELCOME_TOKENS) == {
        "balance": WELCOME_TOKENS,
        "reserved": 0,
        "available": WELCOME_TOKENS,
    }
    packages = await gateway.get("/v1/billing/packages", headers=bearer(token))
    assert packages.status_code == 200, packages.text
    assert [(p["name"], int(p["tokens"]), int(p["priceCents"])) for p in packages.json()["packages"]] == [
        ("starter", 10, 299),
        ("standard", 50, 999),
        ("pro", 200, 2999),
        ("enterprise", 1000, 9999),
    ]
    # ceil(high 1.5 x 16:9 1.2 x dall-e-3 2.0) = ceil(3.6) = 4 per image, two images.
    estimate = await gateway.post(
        "/v1/billing/estimate",
        headers=bearer(token),
        json={"model": "dall-e-3", "quality": "high", "aspectRatio": "16:9", "numImages": 2},
    )
    assert estimate.status_code == 200, estimate.text
    assert int(estimate.json()["tokens"]) == 8
    wrong = await gateway.post(
        "/v1/billing/estimate", headers=bearer(token), json={"model": "no-such-model", "numImages": 1}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["reason"] == "VALIDATION_ERROR"
    assert (await gateway.get("/v1/billing/balance")).status_code == 401


async def test_a_purchase_confirmed_by_the_offline_command_through_the_gateway_credits_once(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    _, _, token = await sign_up(gateway)
    await wait_for_balance(gateway, token, WELCOME_TOKENS)
    key = {"Idempotency-Key": f"buy-{uuid.uuid4().hex}"}
    first = await gateway.post(
        "/v1/billing/purchases", headers=bearer(token) | key, json={"packageName": "standard"}
    )
    assert first.status_code == 200, first.text
    purchase = first.json()["purchase"]
    assert (purchase["status"], int(purchase["tokens"]), int(purchase["amountCents"])) == (
        "PENDING",
        50,
        999,
    )
    assert purchase["paymentIntentId"].startswith("pi_offline_") and first.json()["clientSecret"]
    retry = await gateway.post(
        "/v1/billing/purchases", headers=bearer(token) | key, json={"packageName": "standard"}
    )
    assert retry.status_code == 200 and retry.json()["purchase"]["id"] == purchase["id"]
    conflict = await gateway.post(
        "/v1/billing/purchases", headers=bearer(token) | key, json={"packageName": "pro"}
    )
    assert conflict.status_code == 409 and conflict.json()["error"]["reason"] == "CONFLICT"
    unknown = await gateway.post(
        "/v1/billing/purchases",
        headers=bearer(token) | {"Idempotency-Key": uuid.uuid4().hex},
        json={"packageName": "platinum"},
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["reason"] == "VALIDATION_ERROR"

    confirmed = await run_module(platform, "billing", "services.billing.payments", "confirm", purchase["id"])
    assert confirmed.returncode == 0, confirmed.stderr
    assert "payment_intent.succeeded" in confirmed.stderr
    await wait_for_balance(gateway, token, WELCOME_TOKENS + 50)
    listed = await gateway.get("/v1/billing/purchases", headers=bearer(token))
    assert listed.status_code == 200, listed.text
    assert [(p["id"], p["status"]) for p in listed.json()["purchases"]] == [(purchase["id"], "COMPLETED")]


async def test_stripe_webhooks_with_a_bad_signature_are_refused_with_400(gateway: httpx.AsyncClient) -> None:
    payload = b'{"id": "evt_forged", "object": "event", "type": "payment_intent.succeeded"}'
    forged = sign_payload(payload, "whsec_not_the_secret")
    for headers in ({"Stripe-Signature": forged}, {}, {"Stripe-Signature": "t=1,v1=00"}):
        response = await gateway.post(
            "/webhooks/stripe", content=payload, headers={"Content-Type": "application/json"} | headers
        )
        assert response.status_code == 400, (headers, response.text)
    # A correctly signed event for a purchase nobody made is acknowledged (and recorded); the
    # platform's billing runs with the default (offline development) webhook secret.
    secret = BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value()
    event = stripe_event("payment_intent.succeeded", {"id": "pi_unknown", "object": "payment_intent"})
    body = httpx.Request("POST", "/", json=event).content
    signed = await gateway.post(
        "/webhooks/stripe",
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign_payload(body, secret)},
    )
    assert signed.status_code == 200, signed.text


async def test_transactions_are_paged_newest_first(gateway: httpx.AsyncClient, admin_token: str) -> None:
    user_id, _, token = await sign_up(gateway)
    await wait_for_balance(gateway, token, WELCOME_TOKENS)
    for amount in (1, 2, 3):
        granted = await gateway.post(
            f"/v1/admin/users/{user_id}/tokens:grant",
            headers=bearer(admin_token) | {"Idempotency-Key": f"page-{user_id}-{amount}"},
            json={"amount": amount, "reason": f"grant {amount}"},
        )
        assert granted.status_code == 200, granted.text
    seen: list[tuple[str, int, int]] = []
    page_token = ""
    pages = 0
    while True:
        params = {"pageSize": 3} | ({"pageToken": page_token} if page_token else {})
        page = await gateway.get("/v1/billing/transactions", headers=bearer(token), params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [(t["kind"], int(t["amount"]), int(t["balanceAfter"])) for t in body["transactions"]]
        pages += 1
        page_token = body.get("nextPageToken", "")
        if not page_token:
            break
    assert pages == 2
    assert seen == [("GRANT", 3, 16), ("GRANT", 2, 13), ("GRANT", 1, 11), ("GRANT", WELCOME_TOKENS, 10)]
    bad = await gateway.get("/v1/billing/transactions", headers=bearer(token), params={"pageToken": "!!"})
    assert bad.status_code == 400 and bad.json()["error"]["reason"] == "VALIDATION_ERROR"


async def test_only_admins_grant_tokens_and_a_retried_grant_counts_once(
    gateway: httpx.AsyncClient, admin_token: str
) -> None:
    user_id, _, token = await sign_up(gateway)
    await wait_for_balance(gateway, token, WELCOME_TOKENS)
    route = f"/v1/admin/users/{user_id}/tokens:grant"
    body = {"amount": 25, "reason": "support gesture"}
    refused = await gateway.post(route, headers=bearer(token), json=body)
    assert refused.status_code == 403, refused.text
    key = {"Idempotency-Key": f"gesture-{user_id}"}
    for _ in range(2):
        granted = await gateway.post(route, headers=bearer(admin_token) | key, json=body)
        assert granted.status_code == 200, granted.text
        assert int(granted.json()["balance"]) == WELCOME_TOKENS + 25
    assert (await balance(gateway, token))["balance"] == WELCOME_TOKENS + 25
    negative = await gateway.post(
        route, headers=bearer(admin_token) | {"Idempotency-Key": uuid.uuid4().hex}, json={"amount": -5}
    )
    assert negative.status_code == 400 and negative.json()["error"]["reason"] == "VALIDATION_ERROR"


async def _post_signed(gateway: httpx.AsyncClient, body: bytes) -> httpx.Response:
    secret = BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value()
    headers = {"Content-Type": "application/json", "Stripe-Signature": sign_payload(body, secret)}
    return await gateway.post("/webhooks/stripe", content=body, headers=headers)


@pytest.mark.parametrize("amount_received", ['"999"', "[999]", '{"v": 999}', "999.5", "-999", "1" + "0" * 40])
async def test_signed_stripe_events_with_wrong_types_answer_400_through_the_gateway(
    gateway: httpx.AsyncClient, amount_received: str
) -> None:
    intent = {"id": "pi_typed", "object": "payment_intent", "amount": 999, "currency": "usd"}
    event = stripe_event("payment_intent.succeeded", intent)
    body = httpx.Request("POST", "/", json=event).content.replace(
        b'"amount":999', b'"amount":999,"amount_received":' + amount_received.encode()
    )
    assert b"amount_received" in body
    response = await _post_signed(gateway, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["reason"] == "VALIDATION_ERROR" and "amount_received" in error["message"]


@pytest.mark.parametrize("body", [b'{"id": "evt_\\u0000", "type": "x", "data": {"object": {}}}', b"[" * 5000])
async def test_a_signed_stripe_event_with_a_nul_id_or_5000_levels_answers_400(
    gateway: httpx.AsyncClient, body: bytes
) -> None:
    response = await _post_signed(gateway, body + b"]" * body.count(b"["))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["reason"] == "VALIDATION_ERROR"


async def test_admin_grants_to_unknown_users_are_404_and_huge_grants_are_400(
    gateway: httpx.AsyncClient, admin_token: str
) -> None:
    def grant(user_id: str, amount: int) -> Any:
        return gateway.post(
            f"/v1/admin/users/{user_id}/tokens:grant",
            headers=bearer(admin_token) | {"Idempotency-Key": uuid.uuid4().hex},
            json={"amount": str(amount), "reason": "support"},
        )

    unknown = await grant(str(uuid.uuid4()), 5)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["error"]["reason"] == "NOT_FOUND"
    user_id, _, token = await sign_up(gateway)
    await wait_for_balance(gateway, token, WELCOME_TOKENS)
    for amount in (9223372036854775807, 1_000_001):
        huge = await grant(user_id, amount)
        assert huge.status_code == 400, huge.text
        assert huge.json()["error"]["reason"] == "VALIDATION_ERROR"
    assert (await balance(gateway, token))["balance"] == WELCOME_TOKENS


async def test_a_grant_idempotency_key_reused_with_another_amount_is_409(
    gateway: httpx.AsyncClient, admin_token: str
) -> None:
    user_id, _, token = await sign_up(gateway)
    await wait_for_balance(gateway, token, WELCOME_TOKENS)
    route = f"/v1/admin/users/{user_id}/tokens:grant"
    key = bearer(admin_token) | {"Idempotency-Key": f"once-{user_id}"}
    assert (await gateway.post(route, headers=key, json={"amount": 5, "reason": "x"})).status_code == 200
    for other in ({"amount": 6, "reason": "x"}, {"amount": 5, "reason": "y"}):
        conflict = await gateway.post(route, headers=key, json=other)
        assert conflict.status_code == 409 and conflict.json()["error"]["reason"] == "CONFLICT"
    assert (await balance(gateway, token))["balance"] == WELCOME_TOKENS + 5


async def _buy(gateway: httpx.AsyncClient, token: str, package: str = "starter") -> dict[str, Any]:
    created = await gateway.post(
        "/v1/billing/purchases",
        headers=bearer(token) | {"Idempotency-Key": uuid.uuid4().hex},
        json={"packageName": package},
    )
    assert created.status_code == 200, created.text
    return dict(created.json()["purchase"])


async def _purchase(gateway: httpx.AsyncClient, token: str, purchase_id: str) -> httpx.Response:
    return await gateway.get(f"/v1/billing/purchases/{purchase_id}", headers=bearer(token))


async def test_a_client_follows_its_purchase_pending_completed_or_failed_and_only_its_own(
    gateway: httpx.AsyncClient,
) -> None:
    """GET /v1/billing/purchases/{id}: status, failureReason from Stripe's last payment error,
    completedAt once Stripe confirmed; another user's purchase is 404, a malformed id 400."""
    _, _, token = await sign_up(gateway)
    paid, declined = await _buy(gateway, token, "standard"), await _buy(gateway, token)

    pending = await _purchase(gateway, token, paid["id"])
    assert pending.status_code == 200, pending.text
    assert pending.json() == paid
    assert pending.json()["status"] == "PENDING" and "completedAt" not in pending.json()
    assert pending.json()["failureReason"] == ""  # the gateway writes empty strings out

    succeeded = stripe_event("payment_intent.succeeded", payment_intent_object(_row(paid), "succeeded"))
    assert (await _post_signed(gateway, json.dumps(succeeded).encode())).status_code == 200
    completed = (await _purchase(gateway, token, paid["id"])).json()
    assert (completed["status"], completed["failureReason"], completed["failureCode"]) == (
        "COMPLETED",
        "",
        "",
    )
    assert completed["completedAt"] >= completed["createdAt"]

    stripe_says = "Your card has insufficient funds."
    intent = payment_intent_object(
        _row(declined), "requires_payment_method", "insufficient_funds", stripe_says
    )
    failed_event = stripe_event("payment_intent.payment_failed", intent)
    assert (await _post_signed(gateway, json.dumps(failed_event).encode())).status_code == 200
    failed = (await _purchase(gateway, token, declined["id"])).json()
    assert (failed["status"], failed["failureReason"], failed["failureCode"]) == (
        "FAILED",
        stripe_says,
        "insufficient_funds",
    )
    assert "completedAt" not in failed

    _, _, someone_else = await sign_up(gateway)
    for purchase_id in (paid["id"], str(uuid.uuid4())):
        refused = await _purchase(gateway, someone_else, purchase_id)
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["reason"] == "NOT_FOUND"
    malformed = await _purchase(gateway, token, "not-a-purchase")
    assert malformed.status_code == 400 and malformed.json()["error"]["reason"] == "VALIDATION_ERROR"
    assert (await gateway.get(f"/v1/billing/purchases/{paid['id']}")).status_code == 401


def _row(purchase: dict[str, Any]) -> dict[str, Any]:
    """The fields of a purchase a Stripe event is built from (services.billing.payments)."""
    return {
        "id": purchase["id"],
        "payment_intent_id": purchase["paymentIntentId"],
        "amount_cents": int(purchase["amountCents"]),
        "currency": purchase["currency"],
        "package_name": purchase["packageName"],
    }
