"""The audit log, black-box through the real gateway (docs/security.md, "Audit log").

One journey of security events (a failed sign-in, plan and role changes and a grant by an
admin, an API key created and deleted, a refresh token replayed), each client on its own
loopback address (127.x.y.z), so the addresses the log shows are real TCP peers; then what
an admin reads of it, who may read it, a redelivered event, the retention purge, and the
user id on the log lines of authenticated calls.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from kit import audit
from kit.db import Database
from kit.events import Outbox, stream_key
from services.analytics import audit_log
from services.analytics.audit_store import AuditStore
from services.users import models as users_models
from stylestudio.common.v1 import audit_pb2
from tests.harness import Platform
from tests.harness.streams import append_entry, stream_entries

PASSWORD = "correct horse battery staple"
USER_AGENT = "AuditTests/1.0 (journey)"
SIGN_IN_ADDRESS, KEYS_ADDRESS = "127.0.7.1", "127.0.7.2"
# How long the events may take to travel outbox -> relay -> stream -> analytics on a busy machine.
ARRIVAL_SECONDS = 60.0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _client_at(platform: Platform, address: str) -> httpx.AsyncClient:
    return platform.client(
        transport=httpx.AsyncHTTPTransport(local_address=address), headers={"User-Agent": USER_AGENT}
    )


@dataclass
class Journey:
    started: datetime
    user_id: str
    email: str
    token: str  # the user's access token, signed after they became an admin
    api_key: str  # a key of the user's (an admin's key: not an admin credential)
    deleted_key_id: str
    admin_id: str
    admin_token: str
    secrets: list[str]  # every password, token and key the journey used: in no event, no log line


async def _audit(gateway: httpx.AsyncClient, token: str, **params: Any) -> httpx.Response:
    return await gateway.get("/v1/admin/audit", params=params, headers=_bearer(token))


async def _events_until(
    gateway: httpx.AsyncClient, token: str, wanted: int, about: str = "", **params: Any
) -> list[dict[str, Any]]:
    """The events matching ``params`` (and whose target starts with ``about``) once at least
    ``wanted`` of them arrived: they travel outbox, relay, stream and consumer asynchronously."""
    deadline = asyncio.get_running_loop().time() + ARRIVAL_SECONDS
    while True:
        answer = await _audit(gateway, token, pageSize=100, **params)
        assert answer.status_code == 200, answer.text
        events = [event for event in answer.json()["events"] if event["target"].startswith(about)]
        if len(events) >= wanted or asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def journey(platform: Platform) -> AsyncIterator[Journey]:
    started = datetime.now(UTC) - timedelta(seconds=1)
    email = f"audit.{uuid.uuid4().hex[:10]}@example.com"
    admin_id, admin_token = platform.user_token(role="admin")
    async with (
        _client_at(platform, SIGN_IN_ADDRESS) as at_sign_in,
        _client_at(platform, KEYS_ADDRESS) as at_keys,
        platform.client() as gateway,
    ):
        signed_up = await at_sign_in.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Audit"}
        )
        assert signed_up.status_code == 200, signed_up.text
        user_id = signed_up.json()["user"]["id"]
        # A wrong password, claiming to come from elsewhere: the gateway trusts no proxy here.
        wrong = await at_sign_in.post(
            "/v1/auth/login",
            json={"email": email, "password": "not the password"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert wrong.status_code == 401
        changed = await gateway.patch(
            f"/v1/admin/users/{user_id}", json={"plan": "pro", "role": "admin"}, headers=_bearer(admin_token)
        )
        assert changed.status_code == 200, changed.text
        granted = await gateway.post(
            f"/v1/admin/users/{user_id}/tokens:grant",
            json={"amount": 7, "reason": "audit journey"},
            headers=_bearer(admin_token),
        )
        assert granted.status_code == 200, granted.text
        login = await at_keys.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token, refresh = login.json()["accessToken"], login.json()["refreshToken"]
        keys = []
        for name in ("kept", "deleted"):
            created = await at_keys.post("/v1/users/me/api-keys", json={"name": name}, headers=_bearer(token))
            assert created.status_code == 200, created.text
            keys.append(created.json())
        deleted = await at_keys.delete(
            f"/v1/users/me/api-keys/{keys[1]['apiKey']['id']}", headers=_bearer(token)
        )
        assert deleted.status_code == 200, deleted.text
        assert (await gateway.post("/v1/auth/refresh", json={"refreshToken": refresh})).status_code == 200
        replayed = await gateway.post("/v1/auth/refresh", json={"refreshToken": refresh})
        assert replayed.status_code == 401
        relogin = await at_keys.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        token = relogin.json()["accessToken"]
        # The journey's last event (each test still waits for the events it reads).
        await _events_until(gateway, admin_token, 1, f"users/{user_id}/", action=audit.REFRESH_TOKEN_REUSED)
        yield Journey(
            started=started,
            user_id=user_id,
            email=email,
            token=token,
            api_key=keys[0]["secret"],
            deleted_key_id=keys[1]["apiKey"]["id"],
            admin_id=admin_id,
            admin_token=admin_token,
            secrets=[PASSWORD, "not the password", refresh, token, keys[0]["secret"], keys[1]["secret"]],
        )


@pytest.fixture
async def admin_reads(platform: Platform, journey: Journey) -> AsyncIterator[Any]:
    async with platform.client() as gateway:

        async def read(wanted: int = 1, about: str = "", **params: Any) -> list[dict[str, Any]]:
            return await _events_until(gateway, journey.admin_token, wanted, about, **params)

        yield read


def _only(events: list[dict[str, Any]], action: str) -> dict[str, Any]:
    matching = [event for event in events if event["action"] == action]
    assert len(matching) == 1, (action, events)
    return matching[0]


async def test_the_failed_sign_in_is_recorded_with_the_clients_real_address(
    journey: Journey, admin_reads: Any
) -> None:
    failed = await admin_reads(
        action=audit.LOGIN_FAILED, since=journey.started.isoformat(), about=f"users/{journey.user_id}"
    )
    assert len(failed) == 1, failed
    event = failed[0]
    assert event["actor"] == ""  # nobody was signed in
    assert event["clientAddress"] == SIGN_IN_ADDRESS  # not the X-Forwarded-For the client made up
    assert event["userAgent"] == USER_AGENT
    assert event["details"]["reason"] == "wrong_password"
    assert set(event) == {
        "id",
        "actor",
        "action",
        "target",
        "clientAddress",
        "userAgent",
        "createdAt",
        "details",
    }
    assert datetime.fromisoformat(event["createdAt"]) >= journey.started


async def test_the_users_own_security_events_name_them_and_where_they_acted_from(
    journey: Journey, admin_reads: Any
) -> None:
    events = await admin_reads(3, actor=journey.user_id)
    created = [event for event in events if event["action"] == audit.API_KEY_CREATED]
    assert len(created) == 2, events
    assert all(event["clientAddress"] == KEYS_ADDRESS for event in created)
    assert all(event["target"].startswith(f"users/{journey.user_id}/apiKeys/") for event in created)
    deleted = _only(events, audit.API_KEY_DELETED)
    assert deleted["target"] == f"users/{journey.user_id}/apiKeys/{journey.deleted_key_id}"
    assert deleted["userAgent"] == USER_AGENT
    assert {event["actor"] for event in events} == {journey.user_id}


async def test_an_admins_plan_role_and_token_changes_are_recorded_against_the_admin(
    journey: Journey, admin_reads: Any
) -> None:
    events = await admin_reads(3, actor=journey.admin_id)
    target = f"users/{journey.user_id}"
    plan = _only(events, audit.PLAN_CHANGED)
    assert (plan["target"], plan["details"]) == (target, {"previousPlan": "free", "plan": "pro"})
    role = _only(events, audit.ROLE_CHANGED)
    assert (role["target"], role["details"]) == (target, {"previousRole": "user", "role": "admin"})
    grant = _only(events, audit.TOKENS_GRANTED)
    assert grant["target"] == target and grant["details"]["amount"] == "7"
    assert grant["details"]["transactionId"]
    assert all(event["clientAddress"] == "127.0.0.1" for event in events)


async def test_a_replayed_refresh_token_is_recorded_with_its_session(
    journey: Journey, admin_reads: Any
) -> None:
    ours = await admin_reads(action=audit.REFRESH_TOKEN_REUSED, about=f"users/{journey.user_id}/sessions/")
    assert len(ours) == 1, ours


async def test_no_event_and_no_log_line_holds_an_email_a_password_or_a_token(
    platform: Platform, journey: Journey, admin_reads: Any
) -> None:
    events = await admin_reads(since=journey.started.isoformat())
    text = json.dumps(events)
    logs = "".join(platform.logs(process) for process in [*platform.service_processes, "gateway"])
    for secret in [journey.email, *journey.secrets]:
        assert secret not in text
        assert secret not in logs


async def test_filters_and_pages_walk_the_log_newest_first(
    platform: Platform, journey: Journey, admin_reads: Any
) -> None:
    everything = await admin_reads(3, actor=journey.admin_id)
    async with platform.client() as gateway:
        seen: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await _audit(
                gateway, journey.admin_token, actor=journey.admin_id, pageSize=1, pageToken=token
            )
            assert page.status_code == 200, page.text
            seen.extend(page.json()["events"])
            token = page.json()["nextPageToken"]
            if not token:
                break
        assert [event["id"] for event in seen] == [event["id"] for event in everything]
        stamps = [event["createdAt"] for event in seen]
        assert stamps == sorted(stamps, reverse=True)
        later = datetime.now(UTC) + timedelta(minutes=1)
        none_yet = await _audit(gateway, journey.admin_token, actor=journey.admin_id, since=later.isoformat())
        assert none_yet.json() == {"events": [], "nextPageToken": ""}
        granted = await _audit(
            gateway, journey.admin_token, actor=journey.admin_id, action=audit.TOKENS_GRANTED
        )
        assert [event["action"] for event in granted.json()["events"]] == [audit.TOKENS_GRANTED]
        for params in (
            {"action": "DROP TABLE"},
            {"actor": "a" * 65},
            {"pageToken": "not-ours"},
            {"pageSize": -1},
        ):
            refused = await _audit(gateway, journey.admin_token, **params)
            assert refused.status_code == 400, (params, refused.text)
            assert refused.json()["error"]["reason"] == "VALIDATION_ERROR"


async def test_only_an_admins_session_reads_the_log(platform: Platform, journey: Journey) -> None:
    _, user_token = platform.user_token(plan="enterprise")
    async with platform.client() as gateway:
        assert (await gateway.get("/v1/admin/audit")).status_code == 401
        refused = await _audit(gateway, user_token)
        assert refused.status_code == 403 and refused.json()["error"]["reason"] == "FORBIDDEN"
        # The journey's user is an admin now, but their API key is not an admin credential.
        by_key = await _audit(gateway, journey.api_key)
        assert by_key.status_code == 403
        assert "API keys cannot be used for admin routes" in by_key.json()["error"]["message"]
        assert (await _audit(gateway, journey.token)).status_code == 200


async def _handled(redis: Redis, key: str, message_id: bytes) -> None:
    """Until the analytics group has read ``message_id`` and acknowledged everything (after commit)."""
    deadline = asyncio.get_running_loop().time() + ARRIVAL_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        groups = {group["name"]: group for group in await redis.xinfo_groups(key)}
        group = groups.get(b"analytics") or groups.get("analytics")
        delivered = group["last-delivered-id"] if group else b"0-0"
        delivered = delivered if isinstance(delivered, bytes) else str(delivered).encode()
        if group and _stream_id(delivered) >= _stream_id(message_id) and group["pending"] == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"analytics did not handle {message_id!r} on {key}")


def _stream_id(message_id: bytes) -> tuple[int, int]:
    millis, _, seq = message_id.decode().partition("-")
    return int(millis), int(seq or 0)


async def test_a_redelivered_event_is_stored_once(
    platform: Platform, journey: Journey, admin_reads: Any
) -> None:
    key = stream_key(platform.redis_prefix, "events.users")
    async with Redis.from_url(platform.redis_url) as redis:
        entries = await stream_entries(redis, key)
        original = next(
            fields
            for _, fields in entries
            if fields[b"type"] == audit.AUDIT_RECORDED.encode()
            and audit.API_KEY_DELETED.encode() in fields[b"event"]
            and journey.deleted_key_id.encode() in fields[b"event"]
        )
        again = await append_entry(redis, key, original)
        await _handled(redis, key, again)
    events = await admin_reads(action=audit.API_KEY_DELETED, actor=journey.user_id)
    assert [event["id"] for event in events] == [original[b"id"].decode()]


def _forged_event(actor: str, days_ago: int) -> tuple[str, dict[bytes, bytes]]:
    """An audit event as the users service would write it, ``days_ago`` days old."""
    outbox = Outbox("users", users_models.outbox)
    data = audit_pb2.AuditRecorded(action=audit.SESSIONS_ENDED, actor_service=actor, target="users/x")
    envelope, _ = outbox.row(audit.AUDIT_RECORDED, data)
    envelope.occurred_at.FromDatetime(datetime.now(UTC) - timedelta(days=days_ago))
    fields = {
        b"id": envelope.id.encode(),
        b"type": envelope.type.encode(),
        b"event": envelope.SerializeToString(),
    }
    return envelope.id, fields


async def test_the_retention_purge_deletes_only_events_past_it(platform: Platform, admin_reads: Any) -> None:
    actor = f"retention-{uuid.uuid4().hex[:8]}"
    old_id, old = _forged_event(actor, days_ago=400)
    recent_id, recent = _forged_event(actor, days_ago=2)
    key = stream_key(platform.redis_prefix, "events.users")
    async with Redis.from_url(platform.redis_url) as redis:
        await append_entry(redis, key, old)
        await _handled(redis, key, await append_entry(redis, key, recent))
    assert {event["id"] for event in await admin_reads(2, actor=actor)} == {old_id, recent_id}
    db = Database(platform.database.service_urls["analytics"], "analytics", pool_size=1, max_overflow=0)
    try:
        deleted = await audit_log.purge_once(AuditStore(db), datetime.now(UTC), retention_days=365)
    finally:
        await db.dispose()
    assert deleted >= 1
    assert [event["id"] for event in await admin_reads(actor=actor)] == [recent_id]


async def test_a_log_line_of_an_authenticated_call_carries_the_user_id(
    platform: Platform, journey: Journey
) -> None:
    async with platform.client() as gateway:
        me = await gateway.get("/v1/users/me", headers=_bearer(journey.token))
    assert me.status_code == 200
    request_id = me.headers["x-request-id"]
    deadline = asyncio.get_running_loop().time() + ARRIVAL_SECONDS
    lines: list[str] = []
    while not lines and asyncio.get_running_loop().time() < deadline:
        lines = [line for line in platform.logs("users").splitlines() if f"request_id={request_id}" in line]
        await asyncio.sleep(0.1)
    assert any("UsersService/GetMe" in line and f"user_id={journey.user_id}" in line for line in lines), lines
