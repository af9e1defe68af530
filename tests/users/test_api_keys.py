"""API keys: pro and enterprise only, secret shown once, hashed, revocable, refused after a downgrade."""

from __future__ import annotations

import grpc
import pytest

from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform
from tests.users.conftest import reason_of, signup


async def _user_on_plan(
    platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, plan: str
) -> tuple[str, str]:
    """A signed-up user moved to ``plan`` by a service-side admin change; (user id, fresh token)."""
    signed_up = await signup(auth)
    _, admin_token = platform.user_token(role="admin")
    users = users_pb2_grpc.UsersServiceStub(platform.user_channel("users"))
    await users.AdminUpdateUser(
        users_pb2.AdminUpdateUserRequest(user_id=signed_up.user.id, plan=plan),
        metadata=Platform.bearer(admin_token),
    )
    refreshed = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=signed_up.refresh_token))
    assert refreshed.user.plan == plan
    return signed_up.user.id, refreshed.access_token


async def test_free_users_cannot_create_api_keys(
    auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    signed_up = await signup(auth)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.CreateApiKey(
            users_pb2.CreateApiKeyRequest(name="ci"), metadata=Platform.bearer(signed_up.access_token)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "FEATURE_NOT_IN_PLAN"


async def test_a_pro_user_creates_uses_lists_and_revokes_a_key(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    user_id, token = await _user_on_plan(users_platform, auth, "pro")
    bearer = Platform.bearer(token)
    created = await users.CreateApiKey(users_pb2.CreateApiKeyRequest(name="ci"), metadata=bearer)
    assert created.secret.startswith("sk_live_") and created.secret.startswith(created.api_key.prefix)
    assert len(created.secret) > 40

    me = await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(created.secret))
    assert me.id == user_id
    internal = users_platform.stub("users", auth_pb2_grpc.AuthServiceStub)
    resolved = await internal.AuthenticateApiKey(auth_pb2.AuthenticateApiKeyRequest(secret=created.secret))
    assert (resolved.user_id, resolved.plan, resolved.key_id) == (user_id, "pro", created.api_key.id)

    second = await users.CreateApiKey(users_pb2.CreateApiKeyRequest(name="laptop"), metadata=bearer)
    listed = await users.ListApiKeys(users_pb2.ListApiKeysRequest(page_size=1), metadata=bearer)
    assert [k.id for k in listed.api_keys] == [second.api_key.id] and listed.next_page_token
    rest = await users.ListApiKeys(
        users_pb2.ListApiKeysRequest(page_size=1, page_token=listed.next_page_token), metadata=bearer
    )
    assert [k.id for k in rest.api_keys] == [created.api_key.id] and rest.next_page_token == ""
    assert rest.api_keys[0].HasField("last_used_at")
    assert created.secret not in str(listed) + str(rest)

    await users.DeleteApiKey(users_pb2.DeleteApiKeyRequest(id=created.api_key.id), metadata=bearer)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(created.secret))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.DeleteApiKey(users_pb2.DeleteApiKeyRequest(id=created.api_key.id), metadata=bearer)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_another_users_key_cannot_be_deleted(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    _, owner = await _user_on_plan(users_platform, auth, "enterprise")
    _, stranger = await _user_on_plan(users_platform, auth, "pro")
    created = await users.CreateApiKey(
        users_pb2.CreateApiKeyRequest(name="mine"), metadata=Platform.bearer(owner)
    )
    for key_id in (created.api_key.id, "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.DeleteApiKey(
                users_pb2.DeleteApiKeyRequest(id=key_id), metadata=Platform.bearer(stranger)
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_same_idempotency_key_creates_one_key(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    _, token = await _user_on_plan(users_platform, auth, "pro")
    metadata = (*Platform.bearer(token), ("idempotency-key", "create-ci-key-1"))
    first = await users.CreateApiKey(users_pb2.CreateApiKeyRequest(name="ci"), metadata=metadata)
    again = await users.CreateApiKey(users_pb2.CreateApiKeyRequest(name="ci"), metadata=metadata)
    assert again.api_key.id == first.api_key.id
    assert again.secret == ""  # the secret is never stored, so it cannot be shown twice
    listed = await users.ListApiKeys(users_pb2.ListApiKeysRequest(), metadata=Platform.bearer(token))
    assert len(listed.api_keys) == 1


async def test_the_key_of_a_user_downgraded_to_free_is_refused(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    user_id, token = await _user_on_plan(users_platform, auth, "pro")
    created = await users.CreateApiKey(
        users_pb2.CreateApiKeyRequest(name="ci"), metadata=Platform.bearer(token)
    )
    _, admin_token = users_platform.user_token(role="admin")
    await users.AdminUpdateUser(
        users_pb2.AdminUpdateUserRequest(user_id=user_id, plan="free"), metadata=Platform.bearer(admin_token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(created.secret))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "FEATURE_NOT_IN_PLAN"
    internal = users_platform.stub("users", auth_pb2_grpc.AuthServiceStub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await internal.AuthenticateApiKey(auth_pb2.AuthenticateApiKeyRequest(secret=created.secret))
    assert reason_of(caught.value) == "FEATURE_NOT_IN_PLAN"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await internal.AuthenticateApiKey(auth_pb2.AuthenticateApiKeyRequest(secret="sk_live_unknown"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
