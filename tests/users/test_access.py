"""Who may call what: tampered tokens, internal and admin RPCs, API keys and plans."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import jwt
import pytest

from kit.errors import from_rpc_error
from kit.tokens import generate_signing_key, sign_access_token
from stylestudio.common.v1 import event_pb2
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, events_pb2, users_pb2, users_pb2_grpc
from tests.harness import Platform
from tests.harness.platform import REPO_ROOT
from tests.harness.streams import stream_entries
from tests.users.conftest import new_email, reason_of, signup


def _forged_tokens(platform: Platform, user_id: str) -> dict[str, str]:
    key, now = platform.signing_key, int(time.time())
    good = sign_access_token(key, user_id=user_id, plan="free", role="user")
    header, payload, signature = good.split(".")
    admin_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"role":"user"', b'"role":"admin"')
    ).decode()
    claims = {"sub": user_id, "iss": "stylestudio-users", "iat": now, "exp": now + 60, "role": "admin"}
    return {
        "expired": sign_access_token(key, user_id=user_id, plan="free", role="user", now=now - 3600),
        "signature": f"{header}.{admin_payload}.{signature}",
        "alg-none": jwt.encode(
            {**claims, "aud": "stylestudio"}, "", algorithm="none", headers={"kid": key.kid}
        ),
        "wrong-kid": sign_access_token(
            generate_signing_key(key.kid + "-x"), user_id=user_id, plan="free", role="user"
        ),
        "same-kid-other-key": sign_access_token(
            generate_signing_key(key.kid), user_id=user_id, plan="free", role="user"
        ),
        "wrong-audience": jwt.encode(
            {**claims, "aud": "elsewhere"}, key.private_key, algorithm="ES256", headers={"kid": key.kid}
        ),
        "hs256-with-public-key": jwt.encode(
            {**claims, "aud": "stylestudio"},
            "not-the-key-but-long-enough-for-hs256",
            algorithm="HS256",
            headers={"kid": key.kid},
        ),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "signature",
        "alg-none",
        "wrong-kid",
        "same-kid-other-key",
        "wrong-audience",
        "hs256-with-public-key",
        "garbage",
    ],
)
async def test_expired_and_tampered_tokens_are_refused(
    users_platform: Platform,
    auth: auth_pb2_grpc.AuthServiceStub,
    users: users_pb2_grpc.UsersServiceStub,
    kind: str,
) -> None:
    signed_up = await signup(auth)
    token = _forged_tokens(users_platform, signed_up.user.id)[kind]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(caught.value) == "UNAUTHORIZED"


async def test_a_user_token_cannot_call_internal_rpcs(
    auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    signed_up = await signup(auth)
    bearer = Platform.bearer(signed_up.access_token)
    for call in (
        users.GetUser(users_pb2.GetUserRequest(user_id=signed_up.user.id), metadata=bearer),
        auth.AuthenticateApiKey(auth_pb2.AuthenticateApiKeyRequest(secret="sk_live_x"), metadata=bearer),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_service_credential_can_read_any_user(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    signed_up = await signup(auth)
    service = users_platform.stub("users", users_pb2_grpc.UsersServiceStub)
    found = await service.GetUser(users_pb2.GetUserRequest(user_id=signed_up.user.id))
    assert (found.id, found.plan) == (signed_up.user.id, "free")
    for missing in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service.GetUser(users_pb2.GetUserRequest(user_id=missing))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_me_changes_name_and_avatar_and_validates_them(
    auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    bearer = Platform.bearer((await signup(auth)).access_token)
    updated = await users.UpdateMe(
        users_pb2.UpdateMeRequest(name="  Grace  ", image_url="https://img.example.com/g.png"),
        metadata=bearer,
    )
    assert (updated.name, updated.image_url) == ("Grace", "https://img.example.com/g.png")
    kept = await users.UpdateMe(users_pb2.UpdateMeRequest(image_url=""), metadata=bearer)
    assert (kept.name, kept.image_url) == ("Grace", "")
    for bad in (
        users_pb2.UpdateMeRequest(image_url="javascript:alert(1)"),
        users_pb2.UpdateMeRequest(name=" "),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.UpdateMe(bad, metadata=bearer)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _admin_command(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.users.admin", *args],
        cwd=REPO_ROOT,
        env=platform.env("users"),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _events(platform: Platform, event_type: str, user_id: str) -> list[event_pb2.Event]:
    from redis.asyncio import Redis

    redis = Redis.from_url(platform.redis_url)
    try:
        entries = await stream_entries(redis, f"{platform.redis_prefix}:events.users")
    finally:
        await redis.aclose()
    events = [event_pb2.Event.FromString(fields[b"event"]) for _, fields in entries]
    return [e for e in events if e.type == event_type and e.user_id == user_id]


async def wait_for_events(
    platform: Platform, event_type: str, user_id: str, count: int = 1
) -> list[event_pb2.Event]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = await _events(platform, event_type, user_id)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {event_type} event for {user_id}")


async def test_the_first_admin_is_made_on_the_command_line_and_can_change_plans(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    admin_email, customer = new_email(), await signup(auth)
    await signup(auth, admin_email)
    change = users_pb2.AdminUpdateUserRequest(user_id=customer.user.id, plan="pro")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.AdminUpdateUser(change, metadata=Platform.bearer(customer.access_token))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    done = _admin_command(users_platform, "promote", "--email", admin_email.upper())
    assert done.returncode == 0, done.stderr
    assert admin_email.lower() not in done.stdout  # no personal data in the output
    unknown = _admin_command(users_platform, "promote", "--email", new_email())
    assert unknown.returncode == 1 and "No account" in unknown.stderr

    # The role is in the token: sign in again to get an admin one.
    admin = await auth.Login(auth_pb2.LoginRequest(email=admin_email, password="correct horse battery"))
    assert admin.user.role == "admin"
    updated = await users.AdminUpdateUser(change, metadata=Platform.bearer(admin.access_token))
    assert (updated.plan, updated.role) == ("pro", "user")
    (event,) = await wait_for_events(users_platform, "user.plan_changed", customer.user.id)
    changed = events_pb2.UserPlanChanged()
    event.data.Unpack(changed)
    assert (changed.previous_plan, changed.plan, changed.changed_by) == ("free", "pro", admin.user.id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.AdminUpdateUser(
            users_pb2.AdminUpdateUserRequest(user_id=customer.user.id, plan="platinum"),
            metadata=Platform.bearer(admin.access_token),
        )
    assert from_rpc_error(caught.value).details["field"] == "plan"


async def test_sign_up_and_sign_in_publish_their_events_without_personal_data(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub
) -> None:
    email = new_email()
    signed_up = await signup(auth, email)
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=signed_up.refresh_token))
    user_id = signed_up.user.id
    (created,) = await wait_for_events(users_platform, "user.created", user_id)
    (logged_in,) = await wait_for_events(users_platform, "user.logged_in", user_id)
    (logged_out,) = await wait_for_events(users_platform, "user.logged_out", user_id)
    data = events_pb2.UserCreated()
    created.data.Unpack(data)
    assert (data.user_id, data.plan, data.signup_method) == (user_id, "free", "password")
    # Where it came from, as a network that names no one (the call came from 127.0.0.1).
    assert data.signup_network == "127.0.0.0/24"
    assert b"127.0.0.1" not in created.SerializeToString()
    for event in (created, logged_in, logged_out):
        assert email.lower().encode() not in event.SerializeToString()
