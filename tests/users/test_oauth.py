"""The full OAuth flow for Google (OIDC) and GitHub against the local provider, over real HTTP."""

from __future__ import annotations

import random
import uuid
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest

from kit import audit
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc
from tests.harness import Platform, TestDatabase
from tests.users.conftest import audit_events_about, full_width, new_email, reason_of, signup
from tests.users.oauth_provider import LocalOAuthProvider, Person


def _person(provider: str, email: str | None = None, verified: bool = True) -> Person:
    subject = str(random.randint(10**6, 10**9)) if provider == "github" else uuid.uuid4().hex
    return Person(subject=subject, email=email or new_email(), name="Oscar Auth", email_verified=verified)


async def _consent(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider, provider: str, person: Person
) -> tuple[str, str]:
    """Start the sign-in and let the browser go through the consent page: (code, state)."""
    started = await auth.StartOAuthSignIn(auth_pb2.StartOAuthSignInRequest(provider=provider))
    query = parse_qs(urlsplit(started.authorization_url).query)
    assert query["state"] == [started.state] and query["code_challenge_method"] == ["S256"]
    assert "code_verifier" not in query
    oauth_provider.next_person[provider] = person
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(started.authorization_url)
    assert answer.status_code == 302, answer.text
    redirect = parse_qs(urlsplit(answer.headers["location"]).query)
    assert redirect["state"] == [started.state]
    return redirect["code"][0], started.state


@pytest.mark.parametrize("provider", ["google", "github"])
async def test_first_sign_in_creates_the_account_and_the_next_finds_it(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider, provider: str
) -> None:
    person = _person(provider)
    code, state = await _consent(auth, oauth_provider, provider, person)
    first = await auth.CompleteOAuthSignIn(
        auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=state)
    )
    assert (first.user.email, first.user.name, first.user.plan) == (
        person.email.lower(),
        "Oscar Auth",
        "free",
    )
    assert first.user.image_url == person.picture and first.access_token and first.refresh_token

    code, state = await _consent(auth, oauth_provider, provider, person)
    again = await auth.CompleteOAuthSignIn(
        auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=state)
    )
    assert again.user.id == first.user.id


@pytest.mark.parametrize("provider", ["google", "github"])
async def test_a_verified_provider_email_links_to_the_existing_account(
    auth: auth_pb2_grpc.AuthServiceStub,
    oauth_provider: LocalOAuthProvider,
    provider: str,
    users_platform: Platform,
    users_database: TestDatabase,
) -> None:
    email = new_email()
    existing = await signup(auth, email)
    # The provider's form of the address differs in case and width (NFKC folds both).
    typed = full_width(email.upper())
    code, state = await _consent(auth, oauth_provider, provider, _person(provider, typed))
    signed_in = await auth.CompleteOAuthSignIn(
        auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=state)
    )
    assert signed_in.user.id == existing.user.id
    # A new way into an existing account is a security event.
    recorded = await audit_events_about(users_platform, users_database, f"users/{existing.user.id}")
    assert [(e.action, e.actor_user_id, dict(e.details)) for e in recorded] == [
        (audit.PROVIDER_LINKED, existing.user.id, {"provider": provider})
    ]


async def test_an_unverified_provider_email_neither_links_nor_creates(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider
) -> None:
    email = new_email()
    await signup(auth, email)
    code, state = await _consent(auth, oauth_provider, "google", _person("google", email, verified=False))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.CompleteOAuthSignIn(
            auth_pb2.CompleteOAuthSignInRequest(provider="google", code=code, state=state)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("provider", ["google", "github"])
async def test_a_bad_state_is_refused(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider, provider: str
) -> None:
    code, state = await _consent(auth, oauth_provider, provider, _person(provider))
    other = "github" if provider == "google" else "google"
    for bad_provider, bad_state in ((provider, "forged-" + state), (other, state), (provider, "")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.CompleteOAuthSignIn(
                auth_pb2.CompleteOAuthSignInRequest(provider=bad_provider, code=code, state=bad_state)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(caught.value) == "VALIDATION_ERROR"


@pytest.mark.parametrize("provider", ["google", "github"])
async def test_a_replayed_code_is_refused(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider, provider: str
) -> None:
    code, state = await _consent(auth, oauth_provider, provider, _person(provider))
    await auth.CompleteOAuthSignIn(
        auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=state)
    )
    # Replaying the whole callback: the state was single use.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.CompleteOAuthSignIn(
            auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=state)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Replaying the code with a fresh state: the provider refuses it.
    started = await auth.StartOAuthSignIn(auth_pb2.StartOAuthSignInRequest(provider=provider))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.CompleteOAuthSignIn(
            auth_pb2.CompleteOAuthSignInRequest(provider=provider, code=code, state=started.state)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_id_token_not_signed_by_the_provider_is_refused(
    auth: auth_pb2_grpc.AuthServiceStub, oauth_provider: LocalOAuthProvider
) -> None:
    code, state = await _consent(auth, oauth_provider, "google", _person("google"))
    oauth_provider.forge_id_token = True
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.CompleteOAuthSignIn(
                auth_pb2.CompleteOAuthSignInRequest(provider="google", code=code, state=state)
            )
    finally:
        oauth_provider.forge_id_token = False
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_unknown_provider_is_a_validation_error(auth: auth_pb2_grpc.AuthServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.StartOAuthSignIn(auth_pb2.StartOAuthSignInRequest(provider="myspace"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
