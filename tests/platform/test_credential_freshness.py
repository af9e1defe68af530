"""What a token says is honoured as it is now, in every service (kit/credential_state.py).

Through the gateway against the whole platform: a change to a user's role, plan, sessions
or API keys counts for calls that start one second after the change returned, tokens
signed before it included. (The 1 s waits are the contract's bound, not a measure of speed.)
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
from redis.asyncio import Redis

from kit.credential_state import state_key
from kit.tokens import sign_access_token
from tests.harness import Platform
from tests.harness.rest import PASSWORD, sign_up

# The rule: a change is honoured by calls that start this long after it returned.
HONOURED_AFTER_SECONDS = 1.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _admin_change(platform: Platform, gateway: httpx.AsyncClient, user_id: str, **changes: str) -> None:
    _, admin = platform.user_token(role="admin")
    response = await gateway.patch(f"/v1/admin/users/{user_id}", json=changes, headers=_bearer(admin))
    assert response.status_code == 200, response.text


async def _grant(gateway: httpx.AsyncClient, token: str, user_id: str) -> httpx.Response:
    body = {"amount": 1, "reason": "freshness test"}
    return await gateway.post(f"/v1/admin/users/{user_id}/tokens:grant", json=body, headers=_bearer(token))


async def test_a_demoted_admins_earlier_token_is_refused_on_admin_routes(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    admin = await sign_up(gateway)
    admin_id, token = str(admin["user"]["id"]), str(admin["accessToken"])
    target = await sign_up(gateway)
    target_id = str(target["user"]["id"])

    # Raised to admin after the token was signed: the token is an admin's now.
    await _admin_change(platform, gateway, admin_id, role="admin")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    granted = await _grant(gateway, token, target_id)
    assert granted.status_code == 200, granted.text

    await _admin_change(platform, gateway, admin_id, role="user")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    refused = await _grant(gateway, token, target_id)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["reason"] == "FORBIDDEN"
    system = await gateway.get("/v1/analytics/system", headers=_bearer(token))
    assert system.status_code == 403, system.text


async def test_a_user_raised_to_pro_creates_an_api_key_with_the_token_signed_on_free(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user = await sign_up(gateway)
    user_id, token = str(user["user"]["id"]), str(user["accessToken"])
    refused = await gateway.post("/v1/users/me/api-keys", json={"name": "ci"}, headers=_bearer(token))
    assert refused.status_code == 403
    assert refused.json()["error"]["reason"] == "FEATURE_NOT_IN_PLAN"

    await _admin_change(platform, gateway, user_id, plan="pro")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    created = await gateway.post("/v1/users/me/api-keys", json={"name": "ci"}, headers=_bearer(token))
    assert created.status_code == 200, created.text
    # The other services see the new plan too: batch generation is for pro and up.
    me = await gateway.get("/v1/users/me", headers=_bearer(token))
    assert me.json()["plan"] == "pro"


async def test_a_deleted_or_downgraded_api_key_stops_working_in_every_service(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user = await sign_up(gateway)
    user_id, token = str(user["user"]["id"]), str(user["accessToken"])
    await _admin_change(platform, gateway, user_id, plan="pro")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    first = (await gateway.post("/v1/users/me/api-keys", json={"name": "a"}, headers=_bearer(token))).json()
    second = (await gateway.post("/v1/users/me/api-keys", json={"name": "b"}, headers=_bearer(token))).json()
    # Billing, files and the users service itself have each resolved (and cached) the keys.
    for key in (first["secret"], second["secret"]):
        for path in ("/v1/billing/balance", "/v1/files", "/v1/users/me"):
            assert (await gateway.get(path, headers=_bearer(key))).status_code == 200, path

    deleted = await gateway.delete(f"/v1/users/me/api-keys/{first['apiKey']['id']}", headers=_bearer(token))
    assert deleted.status_code == 200, deleted.text
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    for path in ("/v1/billing/balance", "/v1/files", "/v1/users/me"):
        response = await gateway.get(path, headers=_bearer(first["secret"]))
        assert response.status_code == 401, (path, response.text)
        assert (await gateway.get(path, headers=_bearer(second["secret"]))).status_code == 200, path

    await _admin_change(platform, gateway, user_id, plan="free")
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    for path in ("/v1/billing/balance", "/v1/files", "/v1/users/me"):
        response = await gateway.get(path, headers=_bearer(second["secret"]))
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["reason"] == "FEATURE_NOT_IN_PLAN"


async def test_logout_ends_the_sessions_access_tokens_everywhere(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user = await sign_up(gateway)
    token, refresh = str(user["accessToken"]), str(user["refreshToken"])
    other = await gateway.post(
        "/v1/auth/login",
        json={"email": user["user"]["email"], "password": PASSWORD},
    )
    other_token = other.json()["accessToken"]
    for path in ("/v1/billing/balance", "/v1/files", "/v1/users/me"):
        assert (await gateway.get(path, headers=_bearer(token))).status_code == 200, path

    assert (await gateway.post("/v1/auth/logout", json={"refreshToken": refresh})).status_code == 200
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    for path in ("/v1/billing/balance", "/v1/files", "/v1/users/me"):
        response = await gateway.get(path, headers=_bearer(token))
        assert response.status_code == 401, (path, response.text)
        assert "session has ended" in response.json()["error"]["message"]
        # The user's other session goes on.
        assert (await gateway.get(path, headers=_bearer(other_token))).status_code == 200, path


async def test_refresh_token_reuse_refuses_every_access_token_of_the_family(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user = await sign_up(gateway)
    first_token, first_refresh = str(user["accessToken"]), str(user["refreshToken"])
    rotated = await gateway.post("/v1/auth/refresh", json={"refreshToken": first_refresh})
    assert rotated.status_code == 200
    second_token = rotated.json()["accessToken"]

    replayed = await gateway.post("/v1/auth/refresh", json={"refreshToken": first_refresh})
    assert replayed.status_code == 401
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    for token in (first_token, second_token):
        for path in ("/v1/billing/balance", "/v1/generations", "/v1/users/me"):
            response = await gateway.get(path, headers=_bearer(token))
            assert response.status_code == 401, (path, response.text)


async def test_a_lost_redis_copy_is_rebuilt_from_the_users_database_not_taken_as_all_fine(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user = await sign_up(gateway)
    user_id, token = str(user["user"]["id"]), str(user["accessToken"])
    await _admin_change(platform, gateway, user_id, role="admin")
    assert (
        await gateway.post("/v1/auth/logout", json={"refreshToken": user["refreshToken"]})
    ).status_code == 200
    redis = Redis.from_url(platform.redis_url)
    try:
        assert await redis.delete(state_key(platform.redis_prefix, user_id)) == 1
    finally:
        await redis.aclose()
    await asyncio.sleep(HONOURED_AFTER_SECONDS)
    for path in ("/v1/billing/balance", "/v1/analytics/system", "/v1/users/me"):
        response = await gateway.get(path, headers=_bearer(token))
        assert response.status_code == 401, (path, response.text)
    # Rebuilt, not invented: the role the database holds came back too.
    login = await gateway.post("/v1/auth/login", json={"email": user["user"]["email"], "password": PASSWORD})
    assert (
        await gateway.get("/v1/analytics/system", headers=_bearer(login.json()["accessToken"]))
    ).status_code == 200


async def test_a_token_of_an_account_that_no_longer_exists_is_refused(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    # A validly signed token for a user the users database does not hold (deleted, or
    # never created) and no state in Redis: the rebuild says the account is gone.
    token = sign_access_token(platform.signing_key, user_id=str(uuid.uuid4()), plan="pro", role="admin")
    for path in ("/v1/billing/balance", "/v1/analytics/system", "/v1/users/me"):
        response = await gateway.get(path, headers=_bearer(token))
        assert response.status_code == 401, (path, response.text)
        assert "no longer exists" in response.json()["error"]["message"]
