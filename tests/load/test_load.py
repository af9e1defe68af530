"""The load generator (bench/load) against the real platform: every journey's routes answered,
no 5xx, and its traffic recorded by analytics as synthetic while a plain client's is not.

About 35 s: the session platform, then `python -m bench.load` for 15 s with 4 users."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

from bench.load.webhooks import payment_succeeded_payload, sign_stripe_event
from services.billing.payments import sign_payload
from tests.harness import Platform
from tests.harness.platform import _libpq_dsn

REPO_ROOT = Path(__file__).resolve().parents[2]
JOURNEY_ROUTES = {
    ("POST", "/v1/auth/signup"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/refresh"),
    ("PATCH", "/v1/admin/users/{id}"),
    ("POST", "/v1/files"),
    ("POST", "/v1/billing/estimate"),
    ("POST", "/v1/generations"),
    ("POST", "/v1/generations:batch"),
    ("GET", "/v1/generations/{id}:watch"),
    ("GET", "/v1/generations/{id}"),
    ("GET", "/v1/files/{id}/content"),
    ("POST", "/v1/generations/{id}:cancel"),
    ("GET", "/v1/generations"),
    ("GET", "/v1/dashboard"),
    ("GET", "/v1/analytics/metrics"),
    ("GET", "/v1/analytics/usage"),
    ("GET", "/v1/billing/packages"),
    ("POST", "/v1/billing/purchases"),
    ("POST", "/webhooks/stripe"),
    ("GET", "/v1/billing/purchases"),
    ("GET", "/v1/billing/balance"),
}
RECORD_WAIT_SECONDS = 15.0
PASSWORD = "a long enough password 7"
NAME = "Plain"


def test_webhooks_are_signed_as_billing_signs_them() -> None:
    purchase = {
        "id": str(uuid.uuid4()),
        "paymentIntentId": "pi_offline_1",
        "amountCents": "299",
        "currency": "usd",
        "packageName": "starter",
    }
    payload = payment_succeeded_payload(purchase)
    assert json.loads(payload)["data"]["object"]["metadata"]["purchase_id"] == purchase["id"]
    assert sign_stripe_event(payload, "whsec_x", 1700000000) == sign_payload(
        payload.encode(), "whsec_x", 1700000000
    )


async def test_the_load_runs_every_journey_without_5xx_and_its_traffic_is_synthetic(
    platform: Platform, tmp_path: Path
) -> None:
    async with platform.client() as client:
        plain = await client.post(
            "/v1/auth/signup",
            json={
                "email": f"plain-{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "name": NAME,
            },
        )
        assert plain.status_code == 200, plain.text
    plain_user = plain.json()["user"]["id"]
    _, admin_token = platform.user_token(role="admin")
    out = tmp_path / "load"
    command = [
        sys.executable, "-m", "bench.load", "--host", platform.gateway_url, "--users", "4",
        "--spawn-rate", "4", "--duration", "15s", "--out", str(out), "--admin-token", admin_token,
        "--stop-timeout", "8",
    ]  # fmt: skip
    done = await asyncio.to_thread(subprocess.run, command, cwd=REPO_ROOT, capture_output=True, timeout=90)
    assert done.returncode == 0, done.stderr.decode()[-3000:] + (out / "locust.log").read_text()[-3000:]

    report = json.loads((out / "report.json").read_text())
    routes = {(route["method"], route["route"]) for route in report["routes"]}
    assert JOURNEY_ROUTES <= routes, sorted(JOURNEY_ROUTES - routes)
    assert report["server_errors"] == 0 and report["unanswered"] == 0, report["errors"]
    assert (out / "requests.jsonl").read_text() == ""
    assert not report["journeys"]["failed"], report["journeys"]
    for kind in ("signup", "create", "purchase", "browse", "session"):
        assert report["journeys"]["completed"].get(kind, 0) > 0, report["journeys"]
    webhooks = [json.loads(line) for line in (out / "webhooks.jsonl").read_text().splitlines()]
    assert webhooks and all(json.loads(w["payload"])["type"] == "payment_intent.succeeded" for w in webhooks)
    assert (out / "report.txt").read_text().startswith("users 4,")

    # Signed up through the gateway with the baggage, through the services and their events
    # (users -> billing's grant, the generation worker, the Stripe webhook) to analytics.
    wanted = {"signup", "tokens_granted", "generation_started", "generation_completed", "token_purchase"}
    deadline = time.monotonic() + RECORD_WAIT_SECONDS
    while True:
        synthetic, plain_records = await asyncio.to_thread(_usage_marks, platform, plain_user)
        if (wanted <= synthetic and {"signup", "tokens_granted"} <= set(plain_records)) or (
            time.monotonic() > deadline
        ):
            break
        await asyncio.sleep(0.3)
    assert wanted <= synthetic, synthetic
    assert {"signup", "tokens_granted"} <= set(plain_records), plain_records
    assert not any(plain_records.values()), plain_records


def _usage_marks(platform: Platform, plain_user: str) -> tuple[set[str], dict[str, bool]]:
    """The actions recorded as synthetic, and the plain user's records (action -> synthetic)."""
    with psycopg.connect(_libpq_dsn(platform.database.admin_url)) as connection:
        synthetic = {
            row[0]
            for row in connection.execute(
                "SELECT DISTINCT action FROM analytics.usage_records WHERE synthetic"
            )
        }
        plain = {
            row[0]: row[1]
            for row in connection.execute(
                "SELECT action, synthetic FROM analytics.usage_records WHERE user_id = %s", (plain_user,)
            )
        }
    return synthetic, plain


async def test_system_analytics_leave_synthetic_traffic_out_unless_asked(platform: Platform) -> None:
    """The system analytics' sign-ups equal the recorded non-synthetic ones, or all of them with
    includeSynthetic (compared once both agree: other tests' events may still be arriving)."""
    _, admin_token = platform.user_token(role="admin")
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with platform.client() as client:
        for marks in ({"baggage": "stylestudio.synthetic=true"}, {}):
            body = {"email": f"count-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "name": NAME}
            assert (await client.post("/v1/auth/signup", json=body, headers=marks)).status_code == 200
        deadline = time.monotonic() + RECORD_WAIT_SECONDS
        while True:
            recorded = await asyncio.to_thread(_recorded_signups, platform)
            answered = (
                await _signups(client, headers, include_synthetic=False),
                await _signups(client, headers, include_synthetic=True),
            )
            if answered == recorded or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
    assert answered == recorded
    plain, everyone = recorded
    assert 0 < plain < everyone


def _recorded_signups(platform: Platform) -> tuple[int, int]:
    """(non-synthetic, all) sign-ups in the usage log (the test database is this run's)."""
    with psycopg.connect(_libpq_dsn(platform.database.admin_url)) as connection:
        row = connection.execute(
            "SELECT count(*) FILTER (WHERE NOT synthetic), count(*) FROM analytics.usage_records"
            " WHERE action = 'signup' AND created_at > now() - interval '1 day'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _signups(client: httpx.AsyncClient, headers: dict[str, str], include_synthetic: bool) -> int:
    params = {"window": "1d", "includeSynthetic": str(include_synthetic).lower()}
    answer = await client.get("/v1/analytics/system", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return sum(int(point.get("newUsers", 0)) for point in answer.json()["userGrowth"])
