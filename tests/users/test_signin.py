"""Sign-up, password login, refresh rotation and reuse, logout; the email and password rules.

Brute-force protection: test_brute_force.py; the sign-up limit: test_signup_limit.py."""

from __future__ import annotations

import uuid

import grpc
import pytest

from kit.errors import from_rpc_error
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform
from tests.users.conftest import PASSWORD, behind_gateway, full_width, new_email, reason_of, signup


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
        # Refused by email-validator, accepted by the old rule of thumb.
        ("ada..lovelace@example.com", PASSWORD, "Ada", "email"),
        ("ada@example_site.com", PASSWORD, "Ada", "email"),
        ("ada@printer.local", PASSWORD, "Ada", "email"),
        ("ada\u0000@example.com", PASSWORD, "Ada", "email"),
        # Long enough, but among the most common passwords (any case, any width).
        ("ada@example.com", "password1", "Ada", "password"),
        ("ada@example.com", "Sunshine1", "Ada", "password"),
        ("ada@example.com", full_width("QWERTYUIOP"), "Ada", "password"),
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
    auth: auth_pb2_grpc.AuthServiceStub, users_platform: Platform
) -> None:
    email = new_email()
    await signup(auth, email)
    answers: list[object] = []
    for attempt in (
        auth_pb2.LoginRequest(email=email, password="wrong password!"),
        auth_pb2.LoginRequest(email=new_email(), password=PASSWORD),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.Login(attempt, metadata=behind_gateway(users_platform, f"10.1.0.{len(answers) + 1}"))
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


async def test_a_common_password_is_refused_with_a_message_naming_the_field(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Signup(auth_pb2.SignupRequest(email=new_email(), password="iloveyou2", name="Ada"))
    error = from_rpc_error(caught.value)
    assert (caught.value.code(), error.reason, error.details["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "VALIDATION_ERROR",
        "password",
    )
    assert "common" in error.message


async def test_an_email_in_another_unicode_form_is_the_same_account(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Full-width letters (what some phone keyboards type) fold into plain ones under NFKC.
    wide = full_width(f"ada.{tag}@EXAMPLE") + ".com"
    signed_up = await auth.Signup(auth_pb2.SignupRequest(email=wide, password=PASSWORD, name="Ada"))
    assert signed_up.user.email == f"ada.{tag}@example.com"
    logged_in = await auth.Login(auth_pb2.LoginRequest(email=f"ADA.{tag}@example.com", password=PASSWORD))
    assert logged_in.user.id == signed_up.user.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Signup(auth_pb2.SignupRequest(email=f"ada.{tag}@example.com", password=PASSWORD, name="A"))
    assert reason_of(caught.value) == "CONFLICT"


async def test_sign_in_with_a_malformed_email_is_a_validation_error(
    auth: auth_pb2_grpc.AuthServiceStub,
) -> None:
    for email in ("not-an-email", "ada@", "a\u0000@example.com"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
        assert (reason_of(caught.value), from_rpc_error(caught.value).details["field"]) == (
            "VALIDATION_ERROR",
            "email",
        )
