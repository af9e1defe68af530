"""The public REST routes of API.md ("Auth and users") through the real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.harness import Platform
from tests.users.conftest import PASSWORD, new_email


@pytest.fixture(scope="module")
async def rest(users_platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    try:
        await users_platform.start_and_wait("gateway")
        async with users_platform.client() as client:
            yield client
    finally:
        users_platform.stop("gateway")


async def test_sign_up_read_me_refresh_and_log_out_over_rest(rest: httpx.AsyncClient) -> None:
    email = new_email()
    signed_up = await rest.post(
        "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Rest"}
    )
    assert signed_up.status_code == 200, signed_up.text
    body = signed_up.json()
    assert {"user", "accessToken", "refreshToken", "expiresIn"} <= set(body)
    me = await rest.get("/v1/users/me", headers={"Authorization": f"Bearer {body['accessToken']}"})
    assert me.status_code == 200 and me.json()["email"] == email.lower() and me.json()["plan"] == "free"
    again = await rest.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Rest"})
    assert again.status_code == 409 and again.json()["error"]["reason"] == "CONFLICT"
    wrong = await rest.post("/v1/auth/login", json={"email": email, "password": "nope nope nope"})
    assert wrong.status_code == 401
    refreshed = await rest.post("/v1/auth/refresh", json={"refreshToken": body["refreshToken"]})
    assert refreshed.status_code == 200 and refreshed.json()["refreshToken"] != body["refreshToken"]
    assert (
        await rest.post("/v1/auth/logout", json={"refreshToken": refreshed.json()["refreshToken"]})
    ).json() == {}
    jwks = await rest.get("/.well-known/jwks.json")
    assert jwks.status_code == 200 and jwks.json()["keys"][0]["kty"] == "EC"
    bad = await rest.post("/v1/auth/signup", json={"email": "x", "password": PASSWORD, "name": "Rest"})
    assert bad.status_code == 400 and bad.json()["error"]["reason"] == "VALIDATION_ERROR"
    common = await rest.post(
        "/v1/auth/signup", json={"email": new_email(), "password": "Password123", "name": "Rest"}
    )
    assert common.status_code == 400, common.text
    assert (common.json()["error"]["reason"], common.json()["error"]["details"]["field"]) == (
        "VALIDATION_ERROR",
        "password",
    )
    assert (await rest.get("/v1/users/me")).status_code == 401


async def test_an_api_key_idempotency_key_reused_with_another_name_is_409(
    users_platform: Platform, rest: httpx.AsyncClient
) -> None:
    signed_up = await rest.post(
        "/v1/auth/signup", json={"email": new_email(), "password": PASSWORD, "name": "Keys"}
    )
    user = signed_up.json()
    _, admin = users_platform.user_token(role="admin")
    promoted = await rest.patch(
        f"/v1/admin/users/{user['user']['id']}",
        headers={"Authorization": f"Bearer {admin}"},
        json={"plan": "pro"},
    )
    assert promoted.status_code == 200, promoted.text
    refreshed = await rest.post("/v1/auth/refresh", json={"refreshToken": user["refreshToken"]})
    headers = {"Authorization": f"Bearer {refreshed.json()['accessToken']}", "Idempotency-Key": "key-once"}
    first = await rest.post("/v1/users/me/api-keys", headers=headers, json={"name": "ci"})
    assert first.status_code == 200, first.text
    again = await rest.post("/v1/users/me/api-keys", headers=headers, json={"name": "ci"})
    assert again.status_code == 200 and again.json()["apiKey"]["id"] == first.json()["apiKey"]["id"]
    other = await rest.post("/v1/users/me/api-keys", headers=headers, json={"name": "deploy"})
    assert other.status_code == 409, other.text
    assert other.json()["error"]["reason"] == "CONFLICT"
    listed = await rest.get("/v1/users/me/api-keys", headers=headers)
    assert [key["name"] for key in listed.json()["apiKeys"]] == ["ci"]
