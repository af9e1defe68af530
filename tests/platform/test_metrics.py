"""Every service's metrics port after one user's journey through the gateway: RED per RPC, the
kit's process, pool, outbox and stream figures, and each service's own (docs/operations.md)."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis.asyncio import Redis

from kit.settings import SERVICES
from tests.harness import Platform
from tests.harness.rest import PASSWORD, sign_up

Samples = list[Sample]


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, format="PNG")
    return out.getvalue()


async def scrape(platform: Platform, process: str, **headers: str) -> Samples:
    async with platform.client() as client:
        response = await client.get(platform.metrics_url(process), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (asserting there is one)."""
    found = [s for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no {name} {labels} among {sorted({s.name for s in samples})}"
    return sum(s.value for s in found)


async def until(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.2)
    return result


@pytest.fixture(scope="module")
async def journey(platform: Platform) -> AsyncIterator[dict[str, str]]:
    """One user's journey: sign-up, a wrong password, an upload and a refused one, a generation
    to completion, their analytics, and a Stripe and a Replicate webhook with bad signatures."""
    async with platform.client() as gateway:
        signed_up = await sign_up(gateway)
        auth = {"Authorization": f"Bearer {signed_up['accessToken']}"}
        email = signed_up["user"]["email"]
        wrong = await gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD + "!"})
        assert wrong.status_code == 401, wrong.text
        uploaded = await gateway.post(
            "/v1/files",
            headers=auth,
            data={"category": "product_image"},
            files={"file": ("dress.png", _png("green"), "image/png")},
        )
        assert uploaded.status_code == 200, uploaded.text
        refused = await gateway.post(
            "/v1/files",
            headers=auth,
            data={"category": "product_image"},
            files={"file": ("notes.png", b"not an image at all", "image/png")},
        )
        assert refused.status_code == 415, refused.text

        async def granted() -> bool:  # the sign-up's free tokens arrive by event
            got = await gateway.get("/v1/billing/balance", headers=auth)
            return int(got.json().get("balance", 0)) > 0

        await until(granted)
        body = {"productImageFiles": [uploaded.json()["id"]], "prompt": "a green dress"}
        started = await gateway.post(
            "/v1/generations", json=body, headers=auth | {"Idempotency-Key": str(uuid.uuid4())}
        )
        assert started.status_code == 200, started.text
        generation_id = started.json()["id"]

        async def completed() -> bool:
            got = await gateway.get(f"/v1/generations/{generation_id}", headers=auth)
            return bool(got.json()["status"] == "COMPLETED")

        await until(completed)
        assert (await gateway.get("/v1/analytics/usage", headers=auth)).status_code == 200
        webhook = {"Content-Type": "application/json"}
        stripe = await gateway.post(
            "/webhooks/stripe", content=b"{}", headers=webhook | {"Stripe-Signature": "t=1,v1=00"}
        )
        assert stripe.status_code == 400, stripe.text
        replicate = await gateway.post(
            "/webhooks/replicate",
            content=b"{}",
            headers=webhook
            | {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AA=="},
        )
        assert replicate.status_code == 400, replicate.text
    yield {"generation_id": generation_id}


RPC = "rpc_server_duration_seconds_count"
# An RPC of each service that the journey called, and succeeded.
JOURNEY_RPCS = {
    "users": ("stylestudio.users.v1.AuthService", "Signup"),
    "billing": ("stylestudio.billing.v1.BillingService", "ReserveTokens"),
    "files": ("stylestudio.files.v1.FilesService", "UploadFile"),
    "generation": ("stylestudio.generation.v1.GenerationService", "CreateGeneration"),
    "analytics": ("stylestudio.analytics.v1.AnalyticsService", "ListUsageRecords"),
}


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_serves_rpc_and_process_metrics(
    platform: Platform, journey: dict[str, str], service: str
) -> None:
    samples = await scrape(platform, service)
    rpc_service, method = JOURNEY_RPCS[service]
    ok = {"rpc_system": "grpc", "rpc_service": rpc_service, "rpc_method": method, "rpc_grpc_status_code": "0"}
    assert value(samples, RPC, **ok) >= 1
    assert value(samples, "rpc_server_duration_seconds_bucket", **ok, le="+Inf") == value(samples, RPC, **ok)
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "stylestudio_event_loop_lag_seconds_count") >= 1
    pool = {"db_client_connection_pool_name": service}
    assert value(samples, "db_client_connection_max", **pool) >= 1
    used = value(samples, "db_client_connection_count", **pool, db_client_connection_state="used")
    assert 0 <= used <= value(samples, "db_client_connection_max", **pool)
    assert value(samples, "stylestudio_outbox_rows") >= 0
    assert value(samples, "stylestudio_outbox_oldest_age_seconds") >= 0


async def test_consumer_groups_show_lag_pending_and_dead_letters(
    platform: Platform, journey: dict[str, str]
) -> None:
    group = {"stream": "events.generation", "group": "analytics"}

    async def caught_up() -> bool:  # analytics has read and acknowledged the journey's events
        samples = await scrape(platform, "analytics")
        behind = value(samples, "stylestudio_consumer_group_lag", **group)
        return behind + value(samples, "stylestudio_consumer_group_pending", **group) == 0

    await until(caught_up)
    generation = await scrape(platform, "generation")
    assert value(generation, "stylestudio_consumer_group_lag", stream="jobs.generation") >= 0
    dead = f"{platform.redis_prefix}:events.generation.dead"
    redis = Redis.from_url(platform.redis_url)
    try:
        before = value(
            await scrape(platform, "analytics"), "stylestudio_dead_letters", stream="events.generation"
        )
        await redis.xadd(dead, {"id": "dead-letter-of-the-test"})
        after = value(
            await scrape(platform, "analytics"), "stylestudio_dead_letters", stream="events.generation"
        )
        assert after == before + 1
    finally:
        await redis.delete(dead)
        await redis.aclose()


async def test_service_figures_after_the_journey(platform: Platform, journey: dict[str, str]) -> None:
    users = await scrape(platform, "users")
    assert value(users, "stylestudio_users_sign_ins_total", method="signup", outcome="succeeded") >= 1
    refused = {"method": "password", "outcome": "refused", "reason": "UNAUTHORIZED"}
    assert value(users, "stylestudio_users_sign_ins_total", **refused) >= 1
    files = await scrape(platform, "files")
    assert value(files, "stylestudio_files_uploads_refused_total", reason="INVALID_FILE_TYPE") >= 1
    generation = await scrape(platform, "generation")
    assert value(generation, "stylestudio_generations_finished_total", outcome="completed") >= 1
    assert value(generation, "stylestudio_generation_duration_seconds_count", outcome="completed") >= 1
    assert value(generation, "stylestudio_generation_queue_depth") >= 0
    assert value(generation, "stylestudio_webhook_verifications_failed_total", provider="replicate") >= 1
    billing = await scrape(platform, "billing")
    assert value(billing, "stylestudio_webhook_verifications_failed_total", provider="stripe") >= 1
    assert value(billing, "stylestudio_billing_holds_pending") >= 0
    assert value(billing, "stylestudio_billing_oldest_pending_hold_age_seconds") >= 0


async def test_gateway_labels_requests_with_the_route_template(
    platform: Platform, journey: dict[str, str]
) -> None:
    samples = await scrape(platform, "gateway")
    routes = {s.labels["route"] for s in samples if s.name == "stylestudio_gateway_requests_total"}
    assert "/v1/generations/{id}" in routes
    assert not any(journey["generation_id"] in route for route in routes), routes
    assert value(samples, "process_resident_memory_bytes") > 0


async def test_a_service_port_answers_only_metrics(platform: Platform) -> None:
    async with httpx.AsyncClient() as client:
        base = platform.metrics_url("billing").removesuffix("/metrics")
        missing = await client.get(f"{base}/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["reason"] == "NOT_FOUND"
        posted = await client.post(f"{base}/metrics")
        assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
