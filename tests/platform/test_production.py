"""The whole platform in production, configured as docs/security.md says: it starts without a
warning, and what development allows is refused (public secrets, test switches, fault directives)."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import psycopg
import pytest
from redis.asyncio import Redis

from kit.auth import ServiceCredentials
from kit.bootstrap import ProvisioningSettings, role_name
from kit.clients import open_channel
from kit.service_keys import development_key
from services.billing.payments import sign_payload, stripe_event
from services.billing.settings import BillingSettings
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.generation.conftest import png
from tests.harness import SERVICES, Platform, TestDatabase, own_database
from tests.harness.rest import sign_up
from tests.harness.roles import libpq_dsn

STRIPE_WEBHOOK_SECRET = "whsec_" + secrets.token_urlsafe(32)
PRODUCTION_ENV = {
    "STYLESTUDIO_ENVIRONMENT": "production",
    "STYLESTUDIO_SIGNING_KEY_PASSPHRASE": secrets.token_urlsafe(32),
    "STYLESTUDIO_FILE_URL_SIGNING_KEY": secrets.token_urlsafe(32),
    "STYLESTUDIO_STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
    # No Stripe key here: offline payments, enabled explicitly (production refuses them otherwise).
    "STYLESTUDIO_OFFLINE_PAYMENTS_ENABLED": "true",
    # No Replicate here either: the local provider's stand-ins, allowed explicitly (refused otherwise).
    "STYLESTUDIO_REFUSE_STAND_IN_MODELS": "false",
}


@pytest.fixture(scope="module")
def production_database(infrastructure: object) -> Iterator[TestDatabase]:
    passwords: dict[str, Any] = {f"{service}_db_password": secrets.token_urlsafe(32) for service in SERVICES}
    settings = ProvisioningSettings(environment="production", **passwords)
    with own_database(infrastructure, settings=settings) as database:
        yield database


@pytest.fixture(scope="module")
async def production(
    production_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    work_dir = tmp_path_factory.mktemp("production")
    async with Platform(production_database, redis_url, work_dir, PRODUCTION_ENV) as running:
        await running.start_all()
        yield running


@pytest.fixture
async def rest(production: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with production.client() as client:
        yield client


async def eventually(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.2)
    return result


def test_a_production_platform_configured_as_documented_starts_without_a_warning(
    production: Platform,
) -> None:
    for process in (*SERVICES, "gateway"):
        log = production.logs(process)
        assert "insecure settings" not in log, process
        assert production.processes[process].poll() is None, process


async def test_fault_directives_are_plain_prompt_text_in_production(
    production: Platform, rest: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {(await sign_up(rest))['accessToken']}"}
    uploaded = await rest.post(
        "/v1/files",
        headers=auth,
        data={"category": "product_image"},
        files={"file": ("dress.png", png("navy"), "image/png")},
    )
    assert uploaded.status_code == 200, uploaded.text
    prompt = "a navy dress [fail:permanent] [pause:after_hold] [queued:30]"
    body = {
        "productImageFiles": [uploaded.json()["id"]],
        "prompt": prompt,
        "parameters": {"quality": "draft"},
    }

    async def started() -> httpx.Response | None:
        # The welcome grant arrives through an event: until then the wallet cannot pay.
        response = await rest.post("/v1/generations", json=body, headers=auth)
        return response if response.status_code == 200 else None

    generation = (await eventually(started)).json()

    async def finished() -> dict[str, Any] | None:
        current = (await rest.get(f"/v1/generations/{generation['id']}", headers=auth)).json()
        return current if current["status"] in ("COMPLETED", "FAILED", "CANCELED") else None

    done = await eventually(finished)
    assert done["status"] == "COMPLETED", done
    assert done["prompt"] == prompt
    redis = Redis.from_url(production.redis_url)
    try:
        paused = [key async for key in redis.scan_iter(match=f"{production.redis_prefix}:*checkpoint*")]
    finally:
        await redis.aclose()
    assert paused == []


async def test_a_service_credential_signed_with_a_development_key_is_refused(
    production: Platform,
) -> None:
    # GrantTokens' own caller, but with the key anyone can derive, not the one configured.
    forged = open_channel(production.addresses["billing"], ServiceCredentials(development_key("operator")))
    try:
        stub = billing_pb2_grpc.BillingServiceStub(forged)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GrantTokens(
                billing_pb2.GrantTokensRequest(
                    user_id=str(uuid.uuid4()), amount=1000, reason="forged", idempotency_key=uuid.uuid4().hex
                )
            )
    finally:
        await forged.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_stripe_event_signed_with_the_public_development_secret_is_refused(
    rest: httpx.AsyncClient,
) -> None:
    public = BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value()
    event = stripe_event("payment_intent.succeeded", {"id": "pi_unknown", "object": "payment_intent"})
    body = httpx.Request("POST", "/", json=event).content
    headers = {"Content-Type": "application/json"}
    forged = await rest.post(
        "/webhooks/stripe", content=body, headers=headers | {"Stripe-Signature": sign_payload(body, public)}
    )
    assert forged.status_code == 400, forged.text
    # The configured secret is what counts (the same event, signed with it, is taken).
    signed = sign_payload(body, STRIPE_WEBHOOK_SECRET)
    accepted = await rest.post(
        "/webhooks/stripe", content=body, headers=headers | {"Stripe-Signature": signed}
    )
    assert accepted.status_code == 200, accepted.text


def test_each_service_connects_as_its_own_role(production: Platform) -> None:
    # (The roles' passwords are checked in tests/kit/test_role_passwords.py: roles are shared by
    # the cluster's databases, so another run may have set them again since this one started.)
    database = production.database
    with psycopg.connect(libpq_dsn(database.admin_url)) as connection:
        roles = connection.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = %s", [database.name]
        ).fetchall()
    assert {role_name(service) for service in SERVICES} <= {row[0] for row in roles}
