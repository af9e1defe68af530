"""What an API key cannot do, so that revoking a leaked one locks out whoever holds it:
manage API keys (the `session_only` option in the protos) or reach admin routes (an
admin's key is not an admin credential). The same calls with an access token work."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.harness import Platform

PASSWORD = "correct horse battery staple"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def admin_with_key(platform: Platform, gateway: httpx.AsyncClient) -> tuple[str, str, str, str]:
    """A real admin on plan pro: (user id, access token, API key secret, API key id)."""
    email = f"keys.{uuid.uuid4().hex[:10]}@example.com"
    signed_up = await gateway.post(
        "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "K"}
    )
    user_id = signed_up.json()["user"]["id"]
    _, operator = platform.user_token(role="admin")
    changed = await gateway.patch(
        f"/v1/admin/users/{user_id}", json={"plan": "pro", "role": "admin"}, headers=_bearer(operator)
    )
    assert changed.status_code == 200, changed.text
    login = await gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    token = login.json()["accessToken"]
    created = await gateway.post("/v1/users/me/api-keys", json={"name": "leaked"}, headers=_bearer(token))
    assert created.status_code == 200, created.text
    return user_id, token, created.json()["secret"], created.json()["apiKey"]["id"]


def _key_management(key_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("POST", "/v1/users/me/api-keys", {"name": "another"}),
        ("GET", "/v1/users/me/api-keys", None),
        ("DELETE", f"/v1/users/me/api-keys/{key_id}", None),
    ]


def _admin_routes(user_id: str) -> list[tuple[str, str, dict[str, object] | None]]:
    return [
        ("PATCH", f"/v1/admin/users/{user_id}", {"plan": "enterprise"}),
        ("POST", f"/v1/admin/users/{user_id}/tokens:grant", {"amount": 1, "reason": "key test"}),
        ("GET", "/v1/analytics/system", None),
    ]


async def test_an_api_key_cannot_manage_api_keys(
    gateway: httpx.AsyncClient, admin_with_key: tuple[str, str, str, str]
) -> None:
    _, token, secret, key_id = admin_with_key
    assert (await gateway.get("/v1/users/me", headers=_bearer(secret))).status_code == 200
    for method, path, body in _key_management(key_id):
        refused = await gateway.request(method, path, json=body, headers=_bearer(secret))
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"]["reason"] == "FORBIDDEN"
        assert "API keys cannot be used for this" in refused.json()["error"]["message"]
    # The key is still there: it could not delete itself; the session can.
    for method, path, body in _key_management(key_id):
        allowed = await gateway.request(method, path, json=body, headers=_bearer(token))
        assert allowed.status_code == 200, (method, path, allowed.text)


async def test_an_admins_api_key_is_not_an_admin_credential(
    gateway: httpx.AsyncClient, admin_with_key: tuple[str, str, str, str]
) -> None:
    user_id, token, secret, _ = admin_with_key
    for method, path, body in _admin_routes(user_id):
        refused = await gateway.request(method, path, json=body, headers=_bearer(secret))
        assert refused.status_code == 403, (method, path, refused.text)
        assert "API keys cannot be used for admin routes" in refused.json()["error"]["message"]
    for method, path, body in _admin_routes(user_id):
        allowed = await gateway.request(method, path, json=body, headers=_bearer(token))
        assert allowed.status_code == 200, (method, path, allowed.text)


async def test_revoking_a_leaked_key_locks_its_holder_out(
    gateway: httpx.AsyncClient, admin_with_key: tuple[str, str, str, str]
) -> None:
    _, token, secret, key_id = admin_with_key
    # What the holder of a leaked key would try first: a spare key for later.
    spare = await gateway.post("/v1/users/me/api-keys", json={"name": "spare"}, headers=_bearer(secret))
    assert spare.status_code == 403
    assert (
        await gateway.delete(f"/v1/users/me/api-keys/{key_id}", headers=_bearer(token))
    ).status_code == 200
    await asyncio.sleep(1.0)  # a deleted key stops working everywhere within a second
    assert (await gateway.get("/v1/users/me", headers=_bearer(secret))).status_code == 401
    assert (await gateway.get("/v1/billing/balance", headers=_bearer(secret))).status_code == 401
