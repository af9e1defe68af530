"""The per-address sign-up limit, and sign-ups per network in the admin's system analytics,
through the real gateway with the users and analytics services running as processes.

Clients connect from their own loopback addresses (127.x.y.z), so the addresses the services
see are real, not headers a client could make up.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from kit.errors import RateLimited
from kit.infra import EmbeddedRedis
from services.users.settings import UsersSettings
from services.users.throttle import SignupLimit
from tests.harness import Platform, TestDatabase, own_database
from tests.users.conftest import PASSWORD

SIGNUP_LIMIT = 3


@pytest.fixture(scope="module")
def limited_database(infrastructure: object) -> Iterator[TestDatabase]:
    # Its own: the harness's signing key id is the same in every platform, and a users
    # service keeps the first key stored under an id.
    with own_database(infrastructure, ("users", "analytics")) as database:
        yield database


@pytest.fixture(scope="module")
async def limited(
    limited_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """Users, analytics and the gateway, with a production-like sign-up limit."""
    env = {
        "STYLESTUDIO_SIGNUP_MAX_PER_ADDRESS": str(SIGNUP_LIMIT),
        "STYLESTUDIO_ARGON2_TIME_COST": "1",
        "STYLESTUDIO_ARGON2_MEMORY_COST_KIB": "8192",
        "STYLESTUDIO_ARGON2_PARALLELISM": "1",
        "STYLESTUDIO_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
    }
    work_dir = tmp_path_factory.mktemp("signup-limit")
    async with Platform(limited_database, redis_url, work_dir, extra_env=env) as running:
        await running.start_and_wait("users", "analytics", "gateway")
        yield running


async def sign_up_from(platform: Platform, address: str, email: str | None = None) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with platform.client(transport=transport) as client:
        email = email or f"su.{uuid.uuid4().hex[:12]}@example.com"
        return await client.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "S"})


def test_the_limit_is_strict_in_production_and_generous_in_development() -> None:
    # (model_construct: production's start-up checks on secrets are not what this is about)
    production = UsersSettings.model_construct(environment="production")
    assert production.signup_limit == 10
    assert UsersSettings.model_construct(environment="development").signup_limit >= 1_000
    assert production.model_copy(update={"signup_max_per_address": 50}).signup_limit == 50


async def test_sign_ups_past_the_limit_from_one_address_are_refused_with_retry_after(
    limited: Platform,
) -> None:
    taken = f"taken.{uuid.uuid4().hex[:8]}@example.com"
    assert (await sign_up_from(limited, "127.0.6.1", taken)).status_code == 200
    # A taken email counts too: the limit also bounds probing for registered addresses.
    assert (await sign_up_from(limited, "127.0.6.1", taken)).status_code == 409
    assert (await sign_up_from(limited, "127.0.6.1")).status_code == 200
    refused = await sign_up_from(limited, "127.0.6.1")
    assert refused.status_code == 429, refused.text
    body = refused.json()["error"]
    assert (body["reason"], body["details"]["scope"]) == ("RATE_LIMITED", "address")
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    # The neighbour at the next address is not affected.
    assert (await sign_up_from(limited, "127.0.6.2")).status_code == 200


async def test_sign_ups_per_network_show_in_the_system_analytics_without_addresses(
    limited: Platform,
) -> None:
    # A burst from one /24 (two addresses, each up to its limit), one sign-up from another.
    for address in ("127.0.7.1", "127.0.7.2"):
        for _ in range(SIGNUP_LIMIT):
            assert (await sign_up_from(limited, address)).status_code == 200
    assert (await sign_up_from(limited, "127.0.8.1")).status_code == 200

    _, admin = limited.user_token(role="admin")
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=limited.gateway_url, timeout=30) as client:
        deadline = time.monotonic() + 20
        while True:
            answer = await client.get("/v1/analytics/system", params={"window": "1h"}, headers=headers)
            assert answer.status_code == 200, answer.text
            networks = {row["network"]: row["count"] for row in answer.json()["topSignupNetworks"]}
            if networks.get("127.0.7.0/24") == 2 * SIGNUP_LIMIT and networks.get("127.0.8.0/24") == 1:
                break
            assert time.monotonic() < deadline, networks
            await asyncio.sleep(0.2)
        ranked = [row["network"] for row in answer.json()["topSignupNetworks"]]
        assert ranked.index("127.0.7.0/24") < ranked.index("127.0.8.0/24")
        assert "127.0.7.1" not in answer.text and "127.0.8.1" not in answer.text
        # An ordinary user's own analytics do not show where accounts come from.
        _, user = limited.user_token(plan="enterprise")
        own = await client.get("/v1/analytics/advanced", headers={"Authorization": f"Bearer {user}"})
        assert own.status_code == 200 and not own.json().get("topSignupNetworks")


async def test_the_limit_works_on_the_embedded_redis_6_2_too(tmp_path: Path) -> None:
    """Found by the soak run: the window was set with EXPIRE's NX option (Redis 7 only), so on
    the embedded Redis `make run` falls back to (6.2) every sign-up failed with INTERNAL."""
    server = EmbeddedRedis.start(tmp_path / "redis")
    redis = Redis.from_url(server.url)
    try:
        assert (await redis.info("server"))["redis_version"].startswith("6.2.")
        settings = UsersSettings(signup_max_per_address=2, signup_window_seconds=60, redis_prefix="t")
        limit = SignupLimit(redis, settings)
        await limit.count("127.0.0.9")
        await limit.count("127.0.0.9")
        with pytest.raises(RateLimited) as refused:
            await limit.count("127.0.0.9")
        retry_after = refused.value.retry_after_seconds
        assert retry_after is not None and 0 < retry_after <= 60  # the first sign-up's window, kept
    finally:
        await redis.aclose()
        server.stop()
