"""Credential states in Redis (kit/credential_state.py): never replaced by an older copy, a miss
or an unreachable Redis asks the users service, and nothing answering refuses the call."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from kit.auth import Caller, CallerKind
from kit.credential_state import CredentialState, CredentialStates, CredentialStateStore
from kit.errors import DependencyUnavailable, Unauthenticated
from kit.tokens import ApiKeyVerifier
from tests.harness.platform import free_port


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _prefix() -> str:
    return f"sstest-credentials-{uuid.uuid4().hex[:8]}"


async def test_an_older_copy_never_replaces_a_newer_one(redis: Redis) -> None:
    store = CredentialStateStore(redis, _prefix())
    newer = CredentialState(version=7, role="user", plan="free", ended_sessions=frozenset({"s1"}))
    older = CredentialState(version=6, role="admin", plan="pro")
    assert await store.publish("u1", newer, 60)
    # A rebuild that read the database just before the change lands after it: refused.
    assert not await store.publish("u1", older, 60)
    assert await store.read("u1") == newer
    assert await store.publish("u1", CredentialState(version=8, role="user", plan="pro"), 60)
    stored = await store.read("u1")
    assert stored is not None and stored.version == 8 and stored.plan == "pro"
    await store.forget("u1")
    assert await store.read("u1") is None


async def test_an_account_found_gone_stays_gone(redis: Redis) -> None:
    store = CredentialStateStore(redis, _prefix())
    assert await store.publish("u2", CredentialState(version=41, role="admin", plan="pro"), 60)
    # The rebuild that finds no account replaces any live copy, and no live copy replaces it.
    assert await store.publish("u2", CredentialState.gone(), 60)
    assert not await store.publish("u2", CredentialState(version=42, role="admin", plan="pro"), 60)
    stored = await store.read("u2")
    assert stored is not None and not stored.exists


async def test_a_missing_copy_asks_the_users_service(redis: Redis) -> None:
    asked: list[str] = []

    async def users_service(user_id: str) -> CredentialState:
        asked.append(user_id)
        return CredentialState.gone()

    states = CredentialStates(CredentialStateStore(redis, _prefix()), users_service, cache_seconds=0.0)
    assert not (await states.current("nobody")).exists
    assert asked == ["nobody"]


async def test_an_unreachable_redis_asks_the_users_service_and_nothing_answering_refuses() -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        truth = CredentialState(version=3, role="user", plan="pro", ended_sessions=frozenset({"s9"}))

        async def users_service(user_id: str) -> CredentialState:
            return truth

        states = CredentialStates(CredentialStateStore(dead, _prefix()), users_service)
        assert await states.current("u1") == truth

        async def users_service_down(user_id: str) -> CredentialState:
            raise DependencyUnavailable("users", "Cannot check your credentials right now")

        refusing = CredentialStates(CredentialStateStore(dead, _prefix()), users_service_down)
        with pytest.raises(DependencyUnavailable):
            await refusing.current("u1")
    finally:
        await dead.aclose()


async def test_a_cached_api_key_is_asked_again_once_its_owner_changed_or_is_gone(redis: Redis) -> None:
    store = CredentialStateStore(redis, _prefix())
    await store.publish("owner", CredentialState(version=3, role="user", plan="pro"), 60)
    answers = [(Caller(kind=CallerKind.USER, subject="owner", plan="pro", api_key_id="k1"), 3)]
    asked: list[str] = []

    async def users_service(secret: str) -> tuple[Caller, int]:
        asked.append(secret)
        if not answers:
            raise Unauthenticated("Invalid or revoked API key")
        return answers.pop(0)

    async def no_source(user_id: str) -> CredentialState:
        raise AssertionError("the copy in Redis is there")

    states = CredentialStates(store, no_source, cache_seconds=0.0)
    keys = ApiKeyVerifier(users_service, cache_seconds=60.0)
    assert (await keys.verify("sk_1", states)).plan == "pro"
    assert (await keys.verify("sk_1", states)).plan == "pro"
    assert asked == ["sk_1"]  # the owner did not change: the cached answer stands

    answers.append((Caller(kind=CallerKind.USER, subject="owner", plan="free", api_key_id="k1"), 4))
    await store.publish("owner", CredentialState(version=4, role="user", plan="free"), 60)
    assert (await keys.verify("sk_1", states)).plan == "free"
    assert asked == ["sk_1", "sk_1"]

    await store.publish("owner", CredentialState.gone(), 60)
    with pytest.raises(Unauthenticated):
        await keys.verify("sk_1", states)
