"""The users service's side of credential states (services/users/credentials.py): a change
that cannot reach Redis is refused and rolled back, never made without every service knowing;
GetCredentialState rebuilds from the database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from redis.asyncio import Redis

from kit import audit
from kit.db import Database
from kit.errors import DependencyUnavailable
from kit.events import Outbox
from services.users import models, store
from services.users.credentials import Credentials
from services.users.profiles import Profiles
from services.users.settings import UsersSettings
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform, TestDatabase
from tests.harness.platform import REPO_ROOT, free_port
from tests.users.conftest import PASSWORD, audit_events_about, new_email, signup


def _admin_command(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "services.users.admin", *args]
    env = platform.env("users")
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
async def users_db(users_database: TestDatabase) -> AsyncIterator[Database]:
    db = Database(users_database.service_urls["users"], "users", pool_size=2, max_overflow=0)
    yield db
    await db.dispose()


async def test_a_change_redis_cannot_hear_of_is_refused_and_rolled_back(users_db: Database) -> None:
    async with users_db.transaction() as session:
        user = await store.insert_user(
            session, email=f"redis.down.{uuid.uuid4().hex[:8]}@example.com", name="R", password_hash=None
        )
    assert user is not None
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        credentials = Credentials(users_db, dead, UsersSettings())
        profiles = Profiles(users_db, Outbox("users", models.outbox), credentials)
        with pytest.raises(DependencyUnavailable):
            await profiles.set_plan_and_role(user.id, plan="pro", role="admin", changed_by="test")
    finally:
        await dead.aclose()
    after = await profiles.get(user.id)
    assert (after.plan, after.role, after.credentials_version) == ("free", "user", 0)


async def test_get_credential_state_reads_the_database(users_platform: Platform, auth: object) -> None:
    signed_up = await signup(auth)  # type: ignore[arg-type]
    internal = auth_pb2_grpc.AuthServiceStub(users_platform.channel("users"))
    state = await internal.GetCredentialState(auth_pb2.GetCredentialStateRequest(user_id=signed_up.user.id))
    assert (state.exists, state.role, state.plan, list(state.ended_session_ids)) == (True, "user", "free", [])
    for unknown in (str(uuid.uuid4()), "not-a-uuid"):
        missing = await internal.GetCredentialState(auth_pb2.GetCredentialStateRequest(user_id=unknown))
        assert not missing.exists
    # Internal: a user's own token does not get an answer.
    as_user = auth_pb2_grpc.AuthServiceStub(users_platform.user_channel("users"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await as_user.GetCredentialState(
            auth_pb2.GetCredentialStateRequest(user_id=signed_up.user.id),
            metadata=Platform.bearer(signed_up.access_token),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_ending_every_session_refuses_all_earlier_tokens_of_the_account(
    users_platform: Platform,
    users_database: TestDatabase,
    auth: auth_pb2_grpc.AuthServiceStub,
    users: users_pb2_grpc.UsersServiceStub,
) -> None:
    email = new_email()
    first = await signup(auth, email)
    second = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    bystander = await signup(auth)
    for token in (first.access_token, second.access_token, bystander.access_token):
        await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(token))

    ended = _admin_command(users_platform, "end-sessions", "--email", email)
    assert ended.returncode == 0, ended.stderr
    assert "2 session(s) ended" in ended.stdout
    recorded = await audit_events_about(users_platform, users_database, f"users/{first.user.id}")
    assert [(e.action, e.actor_service, e.actor_user_id, dict(e.details)) for e in recorded] == [
        (audit.SESSIONS_ENDED, audit.OPERATOR, "", {"reason": "ended_by_operator", "sessions": "2"})
    ]
    await asyncio.sleep(1.0)  # the rule: honoured by calls that start a second after
    for token in (first.access_token, second.access_token):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(token))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=second.refresh_token))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Another account is untouched, and the account itself can sign in again.
    await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(bystander.access_token))
    again = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD))
    await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(again.access_token))
    unknown = _admin_command(users_platform, "end-sessions", "--email", new_email())
    assert unknown.returncode == 1 and "No account" in unknown.stderr
