"""The users tests' own platform: its own database (key rotation must not touch other tests'
users service), pointed at a local OAuth provider, with cheap argon2 parameters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from kit import audit
from kit.db import Database
from kit.errors import from_rpc_error
from kit.events import Event, stream_key, unpack
from kit.origin import RELAY_CREDENTIAL_HEADER
from stylestudio.common.v1.audit_pb2 import AuditRecorded
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2_grpc
from tests.harness import Platform, TestDatabase, own_database
from tests.harness.streams import stream_entries
from tests.users.oauth_provider import LocalOAuthProvider

# What the tests assume about brute-force protection: three free failures per account, then
# 1, 2, 4 s between attempts (the cap, lowered from 60 s so the tests can wait for it).
FREE_FAILURES = 3
DELAY_CAP_SECONDS = 4
MAX_FAILURES_PER_ADDRESS = 8
PASSWORD = "correct horse battery"


@pytest.fixture(scope="package")
async def oauth_provider() -> AsyncIterator[LocalOAuthProvider]:
    provider = LocalOAuthProvider()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture(scope="package")
def users_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="package")
async def users_platform(
    users_database: TestDatabase,
    redis_url: str,
    oauth_provider: LocalOAuthProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Platform]:
    env = {
        **oauth_provider.env(),
        # Hashing stays argon2id; only its cost is lowered so the suite stays fast.
        "STYLESTUDIO_ARGON2_TIME_COST": "1",
        "STYLESTUDIO_ARGON2_MEMORY_COST_KIB": "8192",
        "STYLESTUDIO_ARGON2_PARALLELISM": "1",
        "STYLESTUDIO_LOGIN_FREE_FAILURES": str(FREE_FAILURES),
        "STYLESTUDIO_LOGIN_DELAY_BASE_SECONDS": "1",
        "STYLESTUDIO_LOGIN_DELAY_MAX_SECONDS": str(DELAY_CAP_SECONDS),
        "STYLESTUDIO_LOGIN_MAX_FAILURES_PER_ADDRESS": str(MAX_FAILURES_PER_ADDRESS),
        "STYLESTUDIO_SIGNING_KEY_REFRESH_SECONDS": "0.2",
        "STYLESTUDIO_STATS_RPC_TIMEOUT_SECONDS": "2",
    }
    work_dir = tmp_path_factory.mktemp("users-platform")
    async with Platform(users_database, redis_url, work_dir, extra_env=env) as running:
        # Only the users service: the tests that need another service start it themselves,
        # so a neighbour's half-built service cannot stop these tests from running.
        await running.start_and_wait("users")
        yield running


def reason_of(error: BaseException) -> str:
    return str(from_rpc_error(error).reason)  # type: ignore[arg-type]


@pytest.fixture(scope="package")
async def channel(users_platform: Platform) -> AsyncIterator[grpc.aio.Channel]:
    """A channel without credentials of its own: calls present a user's, or none."""
    channel = users_platform.user_channel("users")
    yield channel
    await channel.close()


@pytest.fixture(scope="package")
def auth(channel: grpc.aio.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture(scope="package")
def users(channel: grpc.aio.Channel) -> users_pb2_grpc.UsersServiceStub:
    return users_pb2_grpc.UsersServiceStub(channel)


def full_width(text: str) -> str:
    """``text`` in the full-width forms some keyboards type ("ada" -> U+FF41 U+FF44 U+FF41)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def new_email() -> str:
    return f"Shopper.{uuid.uuid4().hex[:10]}@Example.COM"


async def signup(auth: auth_pb2_grpc.AuthServiceStub, email: str | None = None) -> auth_pb2.SignupResponse:
    request = auth_pb2.SignupRequest(email=email or new_email(), password=PASSWORD, name="Ada Shopper")
    return await auth.Signup(request)


def behind_gateway(platform: Platform, address: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call the gateway relayed for a client at ``address``: only the gateway's own
    credential beside it makes the service believe the forwarded address (kit/origin.py)."""
    return (("x-forwarded-for", address), (RELAY_CREDENTIAL_HEADER, platform.credentials("gateway").token()))


async def audit_events_about(platform: Platform, database: TestDatabase, target: str) -> list[AuditRecorded]:
    """The users service's audit events about ``target`` (``users/<id>``), once its outbox is
    relayed (each was committed before the answer of the call that recorded it)."""
    db = Database(database.service_urls["users"], "users", pool_size=1, max_overflow=0)
    try:
        for _ in range(300):
            async with db.autocommit() as session:
                waiting = (await session.execute(sa.text("SELECT count(*) FROM users.outbox"))).scalar_one()
            if waiting == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await db.dispose()
    found = []
    async with Redis.from_url(platform.redis_url) as redis:
        for _, fields in await stream_entries(redis, stream_key(platform.redis_prefix, "events.users")):
            if fields[b"type"] != audit.AUDIT_RECORDED.encode():
                continue
            data = unpack(Event.FromString(fields[b"event"]), AuditRecorded)
            assert isinstance(data, AuditRecorded)
            if data.target == target:
                found.append(data)
    return found
