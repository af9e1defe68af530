"""A short real flow through the REST API of a platform, for the invariant checker's proof."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.soak.invariants import Target
from services.billing.payments import payment_intent_object, sign_payload, stripe_event
from services.billing.settings import BillingSettings
from tests.harness import Platform
from tests.harness.rest import PASSWORD, sign_up

PLATFORM_ENV = {
    "STYLESTUDIO_FAULT_INJECTION": "true",  # "[fail:permanent]", "[queued:S]" in prompts
    "STYLESTUDIO_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
    "STYLESTUDIO_JANITOR_INTERVAL_SECONDS": "0.5",
    "STYLESTUDIO_ARGON2_TIME_COST": "1",
    "STYLESTUDIO_ARGON2_MEMORY_COST_KIB": "8192",
    "STYLESTUDIO_ARGON2_PARALLELISM": "1",
}
_TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}


@dataclass
class Flow:
    """What the real flow left behind, for the plants to aim at."""

    platform: Platform
    target: Target
    engine: AsyncEngine
    user_id: str
    completed: dict[str, Any]
    failed: dict[str, Any]
    canceled: dict[str, Any]
    purchase_id: str
    spare_file_id: str


async def real_flow(platform: Platform, gateway: httpx.AsyncClient) -> dict[str, Any]:
    signed_up = await sign_up(gateway)
    user_id, email = signed_up["user"]["id"], signed_up["user"]["email"]
    await _ok(gateway.post("/v1/auth/logout", json={"refreshToken": signed_up["refreshToken"]}))
    logged_in = await _ok(gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD}))
    user = {"Authorization": f"Bearer {logged_in['accessToken']}"}
    _, admin_token = platform.user_token(role="admin")
    admin = {"Authorization": f"Bearer {admin_token}"}

    await _until(lambda: _balance(gateway, user), lambda balance: balance >= 10)  # the welcome grant
    kept = await _buy(gateway, user)
    refunded = await _buy(gateway, user)
    await _ok(gateway.post(f"/v1/admin/purchases/{refunded}:refund", json={"reason": "test"}, headers=admin))
    await _ok(
        gateway.post(
            f"/v1/admin/users/{user_id}/tokens:grant",
            json={"amount": 5, "reason": "support"},
            headers={**admin, "Idempotency-Key": str(uuid.uuid4())},
        )
    )

    product = await _upload(gateway, user, "red")
    spare = await _upload(gateway, user, "green")
    deleted = await _upload(gateway, user, "blue")
    await _ok(gateway.delete(f"/v1/files/{deleted}", headers=user))

    completed = await _generate(gateway, user, product, "a red dress on a terrace")
    failed = await _generate(gateway, user, product, "a red dress [fail:permanent]")
    canceled = await _generate(gateway, user, product, "a red dress [queued:10]")
    await _ok(gateway.post(f"/v1/generations/{canceled['id']}:cancel", headers=user))
    outcomes = [await _until_terminal(gateway, user, g["id"]) for g in (completed, failed, canceled)]
    assert [g["status"] for g in outcomes] == ["COMPLETED", "FAILED", "CANCELED"]
    return {
        "user_id": user_id,
        "completed": outcomes[0],
        "failed": outcomes[1],
        "canceled": outcomes[2],
        "purchase_id": kept,
        "spare_file_id": spare,
    }


async def _ok(request: Any) -> dict[str, Any]:
    response = await request
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _until(read: Any, done: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), value
            return value
        await asyncio.sleep(0.1)


async def _balance(gateway: httpx.AsyncClient, user: dict[str, str]) -> int:
    return int((await _ok(gateway.get("/v1/billing/balance", headers=user)))["balance"])


async def _buy(gateway: httpx.AsyncClient, user: dict[str, str]) -> str:
    created = await _ok(
        gateway.post(
            "/v1/billing/purchases",
            json={"packageName": "starter"},
            headers={**user, "Idempotency-Key": str(uuid.uuid4())},
        )
    )
    purchase = created["purchase"]
    row = {
        "id": purchase["id"],
        "payment_intent_id": purchase["paymentIntentId"],
        "amount_cents": int(purchase["amountCents"]),
        "currency": purchase["currency"],
        "package_name": purchase["packageName"],
    }
    payload = json.dumps(stripe_event("payment_intent.succeeded", payment_intent_object(row, "succeeded")))
    secret = BillingSettings().stripe_webhook_secret.get_secret_value()  # the platform's default
    response = await gateway.post(
        "/webhooks/stripe",
        content=payload.encode(),
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign_payload(payload.encode(), secret),
        },
    )
    assert response.status_code == 200, response.text
    return str(purchase["id"])


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 320), colour).save(out, format="PNG")
    return out.getvalue()


async def _upload(gateway: httpx.AsyncClient, user: dict[str, str], colour: str) -> str:
    uploaded = await _ok(
        gateway.post(
            "/v1/files",
            files={"file": (f"{colour}.png", png(colour), "image/png")},
            data={"category": "product_image"},
            headers=user,
        )
    )
    return str(uploaded["id"])


async def _generate(
    gateway: httpx.AsyncClient, user: dict[str, str], file_id: str, prompt: str
) -> dict[str, Any]:
    body = {"productImageFiles": [file_id], "prompt": prompt, "parameters": {"quality": "draft"}}
    return await _ok(gateway.post("/v1/generations", json=body, headers=user))


async def _until_terminal(
    gateway: httpx.AsyncClient, user: dict[str, str], generation_id: str
) -> dict[str, Any]:
    return dict(
        await _until(
            lambda: _ok(gateway.get(f"/v1/generations/{generation_id}", headers=user)),
            lambda g: g["status"] in _TERMINAL,
            timeout=60.0,
        )
    )
