"""Access tokens: every service verifies them locally with the users service's JWKS."""

from __future__ import annotations

import time

import grpc
import jwt
import pytest

from kit.auth import CallerKind
from kit.errors import Unauthenticated
from kit.tokens import AccessTokenVerifier, generate_signing_key, sign_access_token
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.harness import Platform

KEY = generate_signing_key("kid-1")
OTHER = generate_signing_key("kid-2")


def _verifier(*keys: object) -> AccessTokenVerifier:
    async def source() -> list[dict[str, str]]:
        return [key.public_jwk() for key in keys]  # type: ignore[attr-defined]

    return AccessTokenVerifier(source, min_refresh_seconds=0)


async def test_a_valid_token_names_the_user_plan_and_role() -> None:
    token = sign_access_token(KEY, user_id="u1", plan="pro", role="admin", session_id="s1")
    caller = await _verifier(KEY).verify(token)
    assert (caller.kind, caller.subject, caller.plan, caller.role, caller.session_id) == (
        CallerKind.USER,
        "u1",
        "pro",
        "admin",
        "s1",
    )


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda: sign_access_token(KEY, user_id="u", plan="free", role="user", now=time.time() - 3600),
            id="expired",
        ),
        pytest.param(
            lambda: sign_access_token(OTHER, user_id="u", plan="free", role="user"), id="unknown-kid"
        ),
        pytest.param(
            lambda: jwt.encode(
                {"sub": "u", "aud": "stylestudio", "iss": "stylestudio-users", "exp": 2**31},
                key="",
                algorithm="none",
                headers={"kid": "kid-1"},
            ),
            id="alg-none",
        ),
        pytest.param(
            lambda: jwt.encode(
                {
                    "sub": "u",
                    "aud": "elsewhere",
                    "iss": "stylestudio-users",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 60,
                },
                KEY.private_key,
                algorithm="ES256",
                headers={"kid": "kid-1"},
            ),
            id="wrong-audience",
        ),
        pytest.param(
            lambda: sign_access_token(KEY, user_id="u", plan="free", role="user")[:-4] + "AAAA",
            id="bad-signature",
        ),
        pytest.param(
            lambda: sign_access_token(KEY, user_id="u", plan="free", role="user").replace(
                sign_access_token(KEY, user_id="u", plan="free", role="user").split(".")[0],
                jwt.utils.base64url_encode(b'{"alg":"ES256","kid":"kid-2","typ":"at+jwt"}').decode(),
            ),
            id="kid-swapped-to-another-key",
        ),
    ],
)
async def test_a_forged_or_stale_token_is_refused(forge: object) -> None:
    with pytest.raises(Unauthenticated):
        await _verifier(KEY).verify(forge())  # type: ignore[operator]


async def test_a_new_key_is_fetched_when_a_token_names_it() -> None:
    published = [KEY]

    async def source() -> list[dict[str, str]]:
        return [key.public_jwk() for key in published]

    verifier = AccessTokenVerifier(source, min_refresh_seconds=0)
    await verifier.verify(sign_access_token(KEY, user_id="u", plan="free", role="user"))
    published.insert(0, OTHER)  # rotation: the new key signs, the old one still verifies
    assert (
        await verifier.verify(sign_access_token(OTHER, user_id="u", plan="free", role="user"))
    ).subject == "u"
    assert (
        await verifier.verify(sign_access_token(KEY, user_id="v", plan="free", role="user"))
    ).subject == "v"


async def test_a_key_no_longer_published_stops_verifying_once_the_keys_are_re_read() -> None:
    published = [KEY]
    fetches = 0

    async def source() -> list[dict[str, str]]:
        nonlocal fetches
        fetches += 1
        return [key.public_jwk() for key in published]

    verifier = AccessTokenVerifier(source, min_refresh_seconds=0, max_age_seconds=0.2)
    token = sign_access_token(KEY, user_id="u", plan="free", role="user")
    assert (await verifier.verify(token)).subject == "u"
    assert (await verifier.verify(token)).subject == "u" and fetches == 1  # cached meanwhile
    published[:] = [OTHER]  # KEY revoked by the users service
    time.sleep(0.25)
    with pytest.raises(Unauthenticated):
        await verifier.verify(sign_access_token(KEY, user_id="v", plan="free", role="user"))
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)  # the token verified before is checked again, too


async def test_stale_keys_still_verify_while_the_users_service_is_unreachable() -> None:
    reachable = True

    async def source() -> list[dict[str, str]]:
        if not reachable:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
        return [KEY.public_jwk()]

    verifier = AccessTokenVerifier(source, min_refresh_seconds=0, max_age_seconds=0.1)
    await verifier.verify(sign_access_token(KEY, user_id="u", plan="free", role="user"))
    reachable = False
    time.sleep(0.15)
    fresh = sign_access_token(KEY, user_id="w", plan="free", role="user")
    assert (await verifier.verify(fresh)).subject == "w"


async def test_services_accept_tokens_signed_with_the_users_service_key(platform: Platform) -> None:
    _, token = platform.user_token()
    stub = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))
    try:
        await stub.GetBalance(billing_pb2.GetBalanceRequest(), metadata=platform.bearer(token))
    except grpc.aio.AioRpcError as error:  # whatever billing answers, it is past authentication
        assert error.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    bogus = sign_access_token(generate_signing_key("attacker"), user_id="x", plan="pro", role="admin")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetBalance(billing_pb2.GetBalanceRequest(), metadata=platform.bearer(bogus))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_token_cannot_call_an_internal_rpc(platform: Platform) -> None:
    _, token = platform.user_token(role="admin")
    stub = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ReserveTokens(
            billing_pb2.ReserveTokensRequest(user_id="u", amount=1), metadata=platform.bearer(token)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
