"""Sign-up, password login, refresh rotation and reuse, logout, brute force."""

from __future__ import annotations

import grpc
import pytest

from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform
from tests.users.conftest import (
    MAX_FAILURES_PER_ACCOUNT,
    MAX_FAILURES_PER_IP,
    PASSWORD,
    new_email,
    reason_of,
    signup,
)


async def test_signup_creates_a_free_account_and_signs_it_in(
    auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub, users_platform: Platform
) -> None:
    email = new_email()
    signed_up = await signup(auth, email)
    assert signed_up.user.email == email.lower()
    assert (signed_up.user.plan, signed_up.user.role, signed_up.user.name) == ("free", "user", "Ada Shopper")
    assert signed_up.expires_in == 900 and signed_up.refresh_token and signed_up.access_token
    assert not signed_up.user.HasField("last_login_at")
    me = await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(signed_up.access_token))
    assert me.id == signed_up.user.id and me.email == email.lower()
    assert PASSWORD not in users_platform.logs("users")


async def test_signup_with_a_taken_email_in_any_case_is_a_conflict(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    email = new_email()
    await signup(auth, email)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await signup(auth, email.upper())
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert reason_of(caught.value) == "CONFLICT"


@pytest.mark.parametrize(
    ("email", "password", "name", "field"),
    [
        ("not-an-email", PASSWORD, "Ada", "email"),
        ("", PASSWORD, "Ada", "email"),
        ("ada@example.com", "short", "Ada", "password"),
        ("ada@example.com", "x" * 10_000, "Ada", "password"),
        ("ada@example.com", PASSWORD, "", "name"),
        ("ada@example.com", PASSWORD, "n" * 101, "name"),
    ],
)
async def test_signup_refuses_bad_input_naming_the_field(
    auth: auth_pb2_grpc.AuthServiceStub, email: str, password: str, name: str, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Signup(auth_pb2.SignupRequest(email=email, password=password, name=name))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "VALIDATION_ERROR"
    assert caught.value.details()
    from kit.errors import from_rpc_error

    assert from_rpc_error(caught.value).details["field"] == field


async def test_login_returns_a_new_session_and_records_the_sign_in(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    email = new_email()
    signed_up = await signup(auth, email)
    logged_in = await auth.Login(auth_pb2.LoginRequest(email=email.upper(), password=PASSWORD))
    assert logged_in.user.id == signed_up.user.id
    assert logged_in.user.HasField("last_login_at")
    assert logged_in.refresh_token != signed_up.refresh_token


async def test_wrong_password_and_unknown_email_get_the_same_answer(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    email = new_email()
    await signup(auth, email)
    answers: list[object] = []
    for attempt in (
        auth_pb2.LoginRequest(email=email, password="wrong password!"),
        auth_pb2.LoginRequest(email=new_email(), password=PASSWORD),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.Login(attempt, metadata=(("x-forwarded-for", f"10.1.0.{len(answers) + 1}"),))
        answers.append((caught.value.code(), caught.value.details(), reason_of(caught.value)))
    assert (
        answers[0]
        == answers[1]
        == (grpc.StatusCode.UNAUTHENTICATED, "Wrong email or password", "UNAUTHORIZED")
    )


async def test_refresh_rotates_the_pair_and_the_old_token_stops_working(
    auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    first = await signup(auth)
    second = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert second.refresh_token != first.refresh_token and second.user.id == first.user.id
    me = await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(second.access_token))
    assert me.id == first.user.id
    third = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert third.refresh_token not in (first.refresh_token, second.refresh_token)


async def test_reusing_a_refresh_token_revokes_the_whole_session(auth: auth_pb2_grpc.AuthServiceStub) -> None:
    first = await signup(auth)
    second = await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    # The stolen old token is presented again ...
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=first.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # ... so the legitimate holder's newer token is dead too.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_logout_ends_the_session_and_twice_is_harmless(auth: auth_pb2_grpc.AuthServiceStub) -> None:
    signed_up = await signup(auth)
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=signed_up.refresh_token))
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=signed_up.refresh_token))
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token="never-issued"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=signed_up.refresh_token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_garbage_refresh_tokens_are_unauthenticated(auth: auth_pb2_grpc.AuthServiceStub) -> None:
    for token in ("nope", "x" * 5000, "\u00e9\u00e8"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_repeated_failures_lock_the_account_with_retry_after(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    email = new_email()
    await signup(auth, email)
    for attempt in range(MAX_FAILURES_PER_ACCOUNT):
        with pytest.raises(grpc.aio.AioRpcError):
            # Different addresses: the account's own counter is what trips.
            await auth.Login(
                auth_pb2.LoginRequest(email=email, password="not it at all"),
                metadata=(("x-forwarded-for", f"10.2.0.{attempt}"),),
            )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # Even the right password is refused while locked: guessing gets no signal.
        await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "RATE_LIMITED"
    from kit.errors import from_rpc_error

    retry_after = from_rpc_error(caught.value).retry_after_seconds
    assert retry_after is not None and 0 < retry_after <= 900


async def test_repeated_failures_from_one_address_lock_that_address(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    address = (("x-forwarded-for", "203.0.113.9"),)
    for _ in range(MAX_FAILURES_PER_IP):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.Login(auth_pb2.LoginRequest(email=new_email(), password=PASSWORD), metadata=address)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    email = new_email()
    await signup(auth, email)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), metadata=address)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Another address is not affected.
    await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
