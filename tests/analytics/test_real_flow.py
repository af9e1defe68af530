"""Every action reaches the usage log after the real flow that causes it, on the real platform
(all services as processes): sign-up, login, logout, the welcome grant, an admin grant,
upload and delete, a purchase confirmed by a signed Stripe-format webhook and refunded,
generations that complete, fail and are canceled. Then every event the services published
for the user is delivered a second time, and each action is still recorded once."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from google.api import httpbody_pb2
from google.protobuf import json_format
from PIL import Image
from redis.asyncio import Redis

from kit.events import Event
from services.analytics.usage_log import BATCH_COMPLETED, SERVICE_ACTIONS
from services.billing.payments import payment_intent_object, sign_payload, stripe_event
from services.billing.settings import BillingSettings
from stylestudio.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from stylestudio.analytics.v1 import resources_pb2 as analytics_resources
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.billing.v1 import resources_pb2 as billing_resources
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc, resources_pb2
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc
from tests.harness import Platform, own_platform
from tests.harness.streams import append_entry, stream_entries

_ENV = {
    # Generations fail on "[fail:permanent]" and wait in the queue on "[queued:S]".
    "STYLESTUDIO_FAULT_INJECTION": "true",
    "STYLESTUDIO_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
    # Hashing stays argon2id; only its cost is lowered so the test stays fast.
    "STYLESTUDIO_ARGON2_TIME_COST": "1",
    "STYLESTUDIO_ARGON2_MEMORY_COST_KIB": "8192",
    "STYLESTUDIO_ARGON2_PARALLELISM": "1",
}
_TERMINAL = {resources_pb2.COMPLETED, resources_pb2.FAILED, resources_pb2.CANCELED}
_PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
async def flow_platform(
    infrastructure: object, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    work_dir = tmp_path_factory.mktemp("analytics-flow")
    async with own_platform(infrastructure, redis_url, work_dir, extra_env=_ENV) as running:
        yield running


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 320), colour).save(out, format="PNG")
    return out.getvalue()


class _Flow:
    """One user going through the product, over gRPC with the tokens the users service issued."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.auth = auth_pb2_grpc.AuthServiceStub(platform.user_channel("users"))
        self.files = files_pb2_grpc.FilesServiceStub(platform.user_channel("files"))
        self.generation = generation_pb2_grpc.GenerationServiceStub(platform.user_channel("generation"))
        self.billing = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))
        self.analytics = analytics_pb2_grpc.AnalyticsServiceStub(platform.user_channel("analytics"))
        _, admin_token = platform.user_token(role="admin")
        self.admin = platform.bearer(admin_token)
        self.user_id = ""
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def sign_up_log_in_and_out(self) -> None:
        email = f"flow.{uuid.uuid4().hex[:10]}@example.com"
        signed_up = await self.auth.Signup(
            auth_pb2.SignupRequest(email=email, password=_PASSWORD, name="Flo")
        )
        self.user_id = signed_up.user.id
        await self.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=signed_up.refresh_token),
            metadata=self.platform.bearer(signed_up.access_token),
        )
        logged_in = await self.auth.Login(auth_pb2.LoginRequest(email=email, password=_PASSWORD))
        self.metadata = self.platform.bearer(logged_in.access_token)

    async def upload(self, colour: str) -> str:
        content = _png(colour)

        async def parts() -> AsyncIterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(
                    filename="dress.png", content_type="image/png", category="product_image"
                )
            )
            yield files_pb2.UploadFileRequest(chunk=content)

        return str((await self.files.UploadFile(parts(), metadata=self.metadata)).id)

    async def upload_and_delete(self) -> str:
        kept = await self.upload("red")
        deleted = await self.upload("blue")
        await self.files.DeleteFile(files_pb2.DeleteFileRequest(id=deleted), metadata=self.metadata)
        return kept

    async def buy_and_refund(self) -> None:
        packages = await self.billing.ListPackages(billing_pb2.ListPackagesRequest(), metadata=self.metadata)
        created = await self.billing.CreatePurchase(
            billing_pb2.CreatePurchaseRequest(package_name=packages.packages[0].name), metadata=self.metadata
        )
        purchase = created.purchase
        row = {
            "id": purchase.id,
            "payment_intent_id": purchase.payment_intent_id,
            "amount_cents": purchase.amount_cents,
            "currency": purchase.currency,
            "package_name": purchase.package_name,
        }
        payload = json.dumps(
            stripe_event("payment_intent.succeeded", payment_intent_object(row, "succeeded"))
        ).encode()
        secret = BillingSettings().stripe_webhook_secret.get_secret_value()  # the platform's default
        await self.billing.HandleStripeWebhook(
            billing_pb2.HandleStripeWebhookRequest(
                http_body=httpbody_pb2.HttpBody(content_type="application/json", data=payload)
            ),
            metadata=(("stripe-signature", sign_payload(payload, secret)),),
        )
        await self._until_purchase(purchase.id, billing_resources.COMPLETED)
        await self.billing.RefundPurchase(
            billing_pb2.RefundPurchaseRequest(id=purchase.id, reason="test"), metadata=self.admin
        )
        await self.billing.AdminGrantTokens(
            billing_pb2.AdminGrantTokensRequest(user_id=self.user_id, amount=30, reason="support"),
            metadata=self.admin,
        )

    async def _until_purchase(self, purchase_id: str, status: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = await self.billing.ListPurchases(
                billing_pb2.ListPurchasesRequest(), metadata=self.metadata
            )
            if any(p.id == purchase_id and p.status == status for p in listed.purchases):
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the purchase was not completed")

    async def generate(self, file_id: str, prompt: str) -> resources_pb2.Generation:
        return await self.generation.CreateGeneration(
            generation_pb2.CreateGenerationRequest(
                product_image_files=[file_id],
                prompt=prompt,
                parameters=resources_pb2.GenerationParameters(quality="draft"),
            ),
            metadata=self.metadata,
        )

    async def until_terminal(self, generation_id: str) -> resources_pb2.Generation:
        deadline = time.monotonic() + 60
        while True:
            found = await self.generation.GetGeneration(
                generation_pb2.GetGenerationRequest(id=generation_id), metadata=self.metadata
            )
            if found.status in _TERMINAL or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)

    async def generations(self, file_id: str) -> list[resources_pb2.Generation]:
        completed = await self.generate(file_id, "a red dress on a terrace")
        failed = await self.generate(file_id, "a red dress [fail:permanent]")
        waiting = await self.generate(file_id, "a red dress [queued:30]")
        await self.generation.CancelGeneration(
            generation_pb2.CancelGenerationRequest(id=waiting.id), metadata=self.metadata
        )
        return [await self.until_terminal(g.id) for g in (completed, failed, waiting)]

    async def usage(self) -> list[analytics_resources.UsageRecord]:
        records, token = [], ""
        while True:
            page = await self.analytics.ListUsageRecords(
                analytics_pb2.ListUsageRecordsRequest(page_size=100, page_token=token), metadata=self.metadata
            )
            records += page.records
            token = page.next_page_token
            if not token:
                return records

    async def until_actions(
        self, wanted: set[str], timeout: float = 30.0
    ) -> list[analytics_resources.UsageRecord]:
        deadline = time.monotonic() + timeout
        while True:
            records = await self.usage()
            if wanted <= {r.action for r in records} or time.monotonic() > deadline:
                return records
            await asyncio.sleep(0.2)


async def _redeliver_everything_about(platform: Platform, user_id: str) -> int:
    """XADD again every event the services published for ``user_id`` (a relay that crashed
    between XADD and deleting its outbox row does exactly this)."""
    redis = Redis.from_url(platform.redis_url)
    again = 0
    try:
        for stream in ("events.users", "events.billing", "events.files", "events.generation"):
            key = f"{platform.redis_prefix}:{stream}"
            for _, fields in await stream_entries(redis, key):
                event = Event.FromString(fields[b"event"])
                if event.user_id == user_id:
                    await append_entry(redis, key, fields)
                    again += 1
    finally:
        await redis.aclose()
    return again


async def _until_analytics_caught_up(platform: Platform, timeout: float = 30.0) -> None:
    """Until the analytics group has read and acknowledged everything on the four streams."""
    redis = Redis.from_url(platform.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            behind = 0
            for stream in ("events.users", "events.billing", "events.files", "events.generation"):
                key = f"{platform.redis_prefix}:{stream}"
                last = (await redis.xinfo_stream(key))["last-generated-id"]
                group = next(g for g in await redis.xinfo_groups(key) if g["name"] == b"analytics")
                behind += group["pending"] + (group["last-delivered-id"] != last)
            if not behind:
                return
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    raise AssertionError("the analytics consumer did not catch up")


async def test_every_action_arrives_once_after_the_real_flow(flow_platform: Platform) -> None:
    flow = _Flow(flow_platform)
    await flow.sign_up_log_in_and_out()
    file_id = await flow.upload_and_delete()
    await flow.buy_and_refund()
    outcomes = await flow.generations(file_id)
    assert [g.status for g in outcomes] == [
        resources_pb2.COMPLETED,
        resources_pb2.FAILED,
        resources_pb2.CANCELED,
    ]

    # Batches are summarized by test_a_batch_is_summarized_once_with_its_counts.
    actions = SERVICE_ACTIONS - {BATCH_COMPLETED}
    records = await flow.until_actions(set(actions))
    assert {r.action for r in records} == actions
    counts = Counter(r.action for r in records)
    # welcome grant + admin grant; three generations started; the product image, the deleted
    # one and the completed generation's result(s) were uploads.
    assert counts["tokens_granted"] == 2 and counts["generation_started"] == 3
    # Signing up opens a session too: two logins (sign-up, then login), one logout.
    assert counts["login"] == 2 and counts["logout"] == 1 and counts["signup"] == 1
    assert counts["file_upload"] == 2 + len(outcomes[0].result_image_files)
    assert "@" not in json.dumps([json_format.MessageToDict(r.metadata) for r in records])
    # The failure's message reaches the log beside its reason; the prompt does not.
    (failure,) = [json_format.MessageToDict(r.metadata) for r in records if r.action == "generation_failed"]
    assert (failure["reason"], failure["message"]) == (outcomes[1].error.reason, outcomes[1].error.message)
    assert failure["message"] and "red dress" not in json.dumps(failure)

    assert await _redeliver_everything_about(flow_platform, flow.user_id) >= len(records)
    await _until_analytics_caught_up(flow_platform)
    again = await flow.usage()
    assert Counter(r.action for r in again) == counts
    assert sorted(r.id for r in again) == sorted(r.id for r in records)


async def test_the_analytics_routes_through_the_gateway(flow_platform: Platform) -> None:
    """API.md's analytics routes and /v1/analytics/advanced, end to end over REST."""
    _, enterprise = flow_platform.user_token(plan="enterprise")
    _, free = flow_platform.user_token(plan="free")
    _, admin = flow_platform.user_token(role="admin")

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(base_url=flow_platform.gateway_url, timeout=30.0) as gateway:
        logged = await gateway.post(
            "/v1/analytics/usage",
            json={"action": "page_view", "metadata": {"page": "/pricing"}, "sessionId": "web-1"},
            headers={**auth(enterprise), "User-Agent": "Mozilla/5.0 (test)"},
        )
        assert logged.status_code == 200, logged.text
        assert logged.json()["action"] == "page_view" and logged.json()["sessionId"] == "web-1"
        usage = await gateway.get(
            "/v1/analytics/usage", params={"action": "page_view"}, headers=auth(enterprise)
        )
        assert [r["id"] for r in usage.json()["records"]] == [logged.json()["id"]]

        advanced = await gateway.get(
            "/v1/analytics/advanced", params={"window": "2d"}, headers=auth(enterprise)
        )
        assert advanced.status_code == 200, advanced.text
        assert len(advanced.json()["userGrowth"]) == 3
        refused = await gateway.get("/v1/analytics/advanced", headers=auth(free))
        assert refused.status_code == 403 and "FEATURE_NOT_IN_PLAN" in refused.text

        metrics = await gateway.get("/v1/analytics/metrics", params={"window": "7d"}, headers=auth(free))
        assert metrics.status_code == 200, metrics.text
        bad_window = await gateway.get("/v1/analytics/metrics", params={"window": "7w"}, headers=auth(free))
        assert bad_window.status_code == 400 and "window" in bad_window.text

        assert (await gateway.get("/v1/analytics/system", headers=auth(free))).status_code == 403
        system = await gateway.get("/v1/analytics/system", params={"window": "7d"}, headers=auth(admin))
        assert system.status_code == 200 and len(system.json()["generationTrends"]) == 8


async def test_a_batch_is_summarized_once_with_its_counts(flow_platform: Platform) -> None:
    """A batch of four through the gateway: two complete, one fails ([fail:permanent]), one is
    refused at creation (a file that does not exist). Once all have ended, one batch_completed
    record says so; a retried batch and every event delivered again add nothing."""
    user_id, token = flow_platform.user_token(plan="pro")
    operator = flow_platform.stub("billing", billing_pb2_grpc.BillingServiceStub)
    await operator.GrantTokens(
        billing_pb2.GrantTokensRequest(user_id=user_id, amount=20, reason="test", idempotency_key=user_id)
    )
    flow = _Flow(flow_platform)
    flow.metadata, flow.user_id = flow_platform.bearer(token), user_id
    product = await flow.upload("green")

    def item(prompt: str, file_id: str = product) -> dict[str, object]:
        return {"productImageFiles": [file_id], "prompt": prompt, "parameters": {"quality": "draft"}}

    batch = {
        "requests": [
            item("a green coat"),
            item("a green coat [fail:permanent]"),
            item("a green scarf"),
            item("a green hat", str(uuid.uuid4())),
        ]
    }
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"batch-{uuid.uuid4().hex}"}
    async with httpx.AsyncClient(base_url=flow_platform.gateway_url, timeout=30.0) as gateway:
        created = await gateway.post("/v1/generations:batch", json=batch, headers=headers)
        assert created.status_code == 200, created.text
        results = created.json()["results"]
        assert results[3]["error"]["reason"] == "NOT_FOUND"
        started = [r["generation"]["id"] for r in results[:3]]
        outcomes = [await flow.until_terminal(generation_id) for generation_id in started]
        assert [g.status for g in outcomes] == [
            resources_pb2.COMPLETED,
            resources_pb2.FAILED,
            resources_pb2.COMPLETED,
        ]

        await flow.until_actions({BATCH_COMPLETED, "generation_failed"})
        again = await gateway.post("/v1/generations:batch", json=batch, headers=headers)  # the client retries
        assert [r.get("generation", {}).get("id") for r in again.json()["results"][:3]] == started
        assert await _redeliver_everything_about(flow_platform, user_id) > 0
        await _until_analytics_caught_up(flow_platform)

        usage = await gateway.get(
            "/v1/analytics/usage",
            params={"action": BATCH_COMPLETED},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert usage.status_code == 200, usage.text
    (summary,) = usage.json()["records"]
    metadata = summary["metadata"]
    assert (metadata["batchSize"], metadata["successCount"], metadata["failureCount"]) == (4, 2, 2)
    assert metadata["canceledCount"] == 0 and sorted(metadata["generationIds"]) == sorted(started)
