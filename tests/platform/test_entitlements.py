"""Entitlements and limits visible before they bite, through the gateway on the whole platform:
GET /v1/users/me/entitlements, the X-RateLimit-* headers of POST /v1/generations, a plan
change applying to both, and the welcome grant in the balance when sign-up returns."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from redis.asyncio import Redis

from kit.plans import features_of
from services.billing.settings import BillingSettings
from services.files.settings import FilesSettings
from services.generation.settings import GenerationSettings
from tests.generation.conftest import png
from tests.harness import Platform
from tests.harness.rest import sign_up
from tests.harness.streams import append_entry, consumed_up_to, stream_entries

# The real plan configuration: the services' own defaults, which the test platform runs with.
HOURLY_LIMITS = GenerationSettings.model_fields["hourly_generation_limits"].default
WELCOME_TOKENS = BillingSettings.model_fields["welcome_grant_tokens"].default
# The credential freshness rule: a change counts for calls starting this long after it returned.
HONOURED_AFTER_SECONDS = 1.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _quota(plan: str) -> int:
    return FilesSettings.model_construct().quota_for_plan(plan)


async def _entitlements(gateway: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await gateway.get("/v1/users/me/entitlements", headers=_bearer(token))
    assert response.status_code == 200, response.text
    body = dict(response.json())
    assert body.get("missingSources", []) == []
    return body


async def _upload(gateway: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await gateway.post(
        "/v1/files",
        headers=_bearer(token),
        data={"category": "product_image"},
        files={"file": ("dress.png", png("navy"), "image/png")},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _generate(gateway: httpx.AsyncClient, token: str, file_id: str) -> httpx.Response:
    body = {"productImageFiles": [file_id], "prompt": "a navy dress", "parameters": {"quality": "draft"}}
    return await gateway.post("/v1/generations", json=body, headers=_bearer(token))


def _limits(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["x-ratelimit-limit"]),
        int(headers["x-ratelimit-remaining"]),
        int(headers["x-ratelimit-reset"]),
    )


async def _set_plan(platform: Platform, gateway: httpx.AsyncClient, user_id: str, plan: str) -> None:
    _, admin = platform.user_token(role="admin")
    response = await gateway.patch(f"/v1/admin/users/{user_id}", json={"plan": plan}, headers=_bearer(admin))
    assert response.status_code == 200, response.text


async def test_a_free_users_entitlements_follow_their_uploads_and_generations(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    token = str((await sign_up(gateway))["accessToken"])
    fresh = await _entitlements(gateway, token)
    assert fresh["plan"] == "free" and fresh.get("features", []) == features_of("free") == []
    assert fresh["generationsPerHour"] == fresh["generationsRemaining"] == HOURLY_LIMITS["free"]
    assert int(fresh["storageQuotaBytes"]) == _quota("free")
    assert int(fresh.get("storageUsedBytes", "0")) == 0
    assert datetime.fromisoformat(fresh["nextGenerationAt"]) <= datetime.now(UTC)

    uploaded = await _upload(gateway, token)
    started = await _generate(gateway, token, uploaded["id"])
    assert started.status_code == 200, started.text
    used = await _entitlements(gateway, token)
    assert int(used["storageUsedBytes"]) == int(uploaded["size"])
    assert used["generationsRemaining"] == HOURLY_LIMITS["free"] - 1


async def test_the_rate_limit_headers_count_down_to_the_429(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    token = str((await sign_up(gateway))["accessToken"])
    file_id = (await _upload(gateway, token))["id"]
    limit = HOURLY_LIMITS["free"]
    seen = []
    for _ in range(limit):
        response = await _generate(gateway, token, file_id)
        assert response.status_code == 200, response.text
        seen.append(_limits(response))
    # Reset is 0 while some remain; after the last one, the seconds until the window frees one.
    assert [(lim, remaining) for lim, remaining, _ in seen] == [
        (limit, limit - n) for n in range(1, limit + 1)
    ]
    assert [reset for _, _, reset in seen[:-1]] == [0] * (limit - 1) and seen[-1][2] > 0

    refused = await _generate(gateway, token, file_id)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["reason"] == "RATE_LIMITED"
    limit_header, remaining, reset = _limits(refused)
    assert (limit_header, remaining) == (limit, 0) and 0 < reset <= 3600
    assert int(refused.headers["retry-after"]) == reset
    entitlements = await _entitlements(gateway, token)
    assert entitlements.get("generationsRemaining", 0) == 0
    next_at = datetime.fromisoformat(entitlements["nextGenerationAt"])
    assert 0 < (next_at - datetime.now(UTC)).total_seconds() <= 3600


async def test_a_plan_change_applies_at_once_to_the_entitlements_and_the_headers(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    signed_up = await sign_up(gateway)
    user_id, token = str(signed_up["user"]["id"]), str(signed_up["accessToken"])
    file_id = (await _upload(gateway, token))["id"]
    first = await _generate(gateway, token, file_id)
    assert _limits(first)[:2] == (HOURLY_LIMITS["free"], HOURLY_LIMITS["free"] - 1)

    await _set_plan(platform, gateway, user_id, "pro")
    # The token still says free; the entitlements read the plan as it is now.
    pro = await _entitlements(gateway, token)
    assert pro["plan"] == "pro" and pro["features"] == ["batch", "api_access"] == features_of("pro")
    assert pro["generationsPerHour"] == HOURLY_LIMITS["pro"]
    assert pro["generationsRemaining"] == HOURLY_LIMITS["pro"] - 1  # the free hour's one counts
    assert int(pro["storageQuotaBytes"]) == _quota("pro")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    second = await _generate(gateway, token, file_id)
    assert second.status_code == 200, second.text
    assert _limits(second) == (HOURLY_LIMITS["pro"], HOURLY_LIMITS["pro"] - 2, 0)
    item = {"productImageFiles": [file_id], "prompt": "a navy dress", "parameters": {"quality": "draft"}}
    batch = await gateway.post(
        "/v1/generations:batch", json={"requests": [item, item]}, headers=_bearer(token)
    )
    assert batch.status_code == 200, batch.text
    assert all("generation" in result for result in batch.json()["results"]), batch.text
    assert _limits(batch) == (HOURLY_LIMITS["pro"], HOURLY_LIMITS["pro"] - 4, 0)

    await _set_plan(platform, gateway, user_id, "enterprise")
    enterprise = await _entitlements(gateway, token)
    assert enterprise["features"] == ["batch", "api_access", "advanced_analytics"]
    assert enterprise["generationsPerHour"] == HOURLY_LIMITS["enterprise"]


async def _balance(gateway: httpx.AsyncClient, token: str) -> int:
    response = await gateway.get("/v1/billing/balance", headers=_bearer(token))
    assert response.status_code == 200, response.text
    return int(response.json().get("balance", "0"))


async def test_the_welcome_grant_is_in_the_balance_when_sign_up_returns_and_granted_once(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    tokens = {}
    for _ in range(20):
        signed_up = await sign_up(gateway)
        token = str(signed_up["accessToken"])
        assert await _balance(gateway, token) == WELCOME_TOKENS  # read right after, no wait
        tokens[str(signed_up["user"]["id"])] = token

    # The user.created events arrive after the grant sign-up asked for, and one is delivered
    # a second time: neither grants again.
    stream = f"{platform.redis_prefix}:events.users"
    redis = Redis.from_url(platform.redis_url)
    try:
        created = [
            (entry_id, fields)
            for entry_id, fields in await stream_entries(redis, stream)
            if fields[b"type"] == b"user.created"
            and any(user.encode() in fields[b"event"] for user in tokens)
        ]
        assert len(created) == len(tokens)
        redelivered = await append_entry(redis, stream, created[0][1])
        deadline = time.monotonic() + 30
        while not await consumed_up_to(redis, stream, redelivered, b"billing"):
            assert time.monotonic() < deadline, "billing never read the user.created events"
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    for token in tokens.values():
        assert await _balance(gateway, token) == WELCOME_TOKENS
        transactions = await gateway.get("/v1/billing/transactions", headers=_bearer(token))
        kinds = [item["kind"] for item in transactions.json()["transactions"]]
        assert kinds == ["GRANT"]
