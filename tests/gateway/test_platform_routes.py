"""Every route of API.md reaches its RPC on the running platform (services as real processes).

The proof is the trace: the gateway's X-Trace-Id names a trace in which the expected
service recorded a server span for the expected RPC. That holds whatever the RPC
answers (a real result, a validation error, or UNIMPLEMENTED while its issue is open).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from tests.harness import Platform

ID = str(uuid.uuid4())
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82"
)


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    rpc: str
    who: str = "user"  # "public", "user" or "admin"
    json_body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    multipart: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


USERS, AUTH = "stylestudio.users.v1.UsersService", "stylestudio.users.v1.AuthService"
BILLING, FILES = "stylestudio.billing.v1.BillingService", "stylestudio.files.v1.FilesService"
GENERATION = "stylestudio.generation.v1.GenerationService"
ANALYTICS = "stylestudio.analytics.v1.AnalyticsService"
GENERATION_REQUEST = {
    "productImageFiles": [ID],
    "prompt": "a shirt on a beach",
    "parameters": {"model": "stable-diffusion-xl", "style": "realistic", "quality": "standard"},
}

# API.md, table by table (with example values in place of the path variables).
CASES = [
    Case("POST", "/v1/auth/signup", f"{AUTH}/Signup", "public",
         {"email": f"gw-{ID}@example.com", "password": "correct horse battery", "name": "Gate Way"}),
    Case("POST", "/v1/auth/login", f"{AUTH}/Login", "public", {"email": "no@example.com", "password": "x"}),
    Case("POST", "/v1/auth/refresh", f"{AUTH}/RefreshToken", "public", {"refreshToken": "not-a-token"}),
    Case("POST", "/v1/auth/logout", f"{AUTH}/Logout", "public", {"refreshToken": "not-a-token"}),
    Case("GET", "/v1/auth/oauth/google/authorize", f"{AUTH}/StartOAuthSignIn", "public"),
    Case("POST", "/v1/auth/oauth/github/callback", f"{AUTH}/CompleteOAuthSignIn", "public",
         {"code": "c", "state": "s"}),
    Case("GET", "/v1/users/me", f"{USERS}/GetMe"),
    Case("PATCH", "/v1/users/me", f"{USERS}/UpdateMe", json_body={"name": "New Name"}),
    Case("GET", "/v1/users/me/stats", f"{USERS}/GetMyStats"),
    Case("POST", "/v1/users/me/api-keys", f"{USERS}/CreateApiKey", json_body={"name": "ci"},
         headers={"Idempotency-Key": ID}),
    Case("GET", "/v1/users/me/api-keys", f"{USERS}/ListApiKeys"),
    Case("DELETE", f"/v1/users/me/api-keys/{ID}", f"{USERS}/DeleteApiKey"),
    Case("GET", "/.well-known/jwks.json", f"{AUTH}/GetJwks", "public"),
    Case("PATCH", f"/v1/admin/users/{ID}", f"{USERS}/AdminUpdateUser", "admin", {"plan": "pro"}),
    Case("POST", f"/v1/admin/users/{ID}/tokens:grant", f"{BILLING}/AdminGrantTokens", "admin",
         {"amount": "5", "reason": "test"}),
    Case("GET", "/v1/billing/balance", f"{BILLING}/GetBalance"),
    Case("GET", "/v1/billing/transactions?pageSize=5&pageToken=", f"{BILLING}/ListTransactions"),
    Case("GET", "/v1/billing/packages", f"{BILLING}/ListPackages", "public"),
    Case("POST", "/v1/billing/estimate", f"{BILLING}/EstimateCost", "public",
         {"model": "dall-e-3", "quality": "high", "aspectRatio": "16:9", "numImages": 2}),
    Case("POST", "/v1/billing/purchases", f"{BILLING}/CreatePurchase", json_body={"packageName": "starter"},
         headers={"Idempotency-Key": ID}),
    Case("GET", "/v1/billing/purchases?pageSize=5", f"{BILLING}/ListPurchases"),
    Case("GET", f"/v1/billing/purchases/{ID}", f"{BILLING}/GetPurchase"),
    Case("POST", "/webhooks/stripe", f"{BILLING}/HandleStripeWebhook", "public",
         content=b'{"id": "evt_test", "type": "payment_intent.succeeded"}',
         headers={"Stripe-Signature": "t=1,v1=bad", "Content-Type": "application/json"}),
    Case("POST", "/v1/files", f"{FILES}/UploadFile", multipart=True),
    Case("GET", "/v1/files?category=product_image&pageSize=5", f"{FILES}/ListFiles"),
    Case("GET", f"/v1/files/{ID}", f"{FILES}/GetFile"),
    Case("GET", f"/v1/files/{ID}/content", f"{FILES}/DownloadFile"),
    Case("GET", f"/v1/files/{ID}/content:signed?expires=1&kid=k&sig=s", f"{FILES}/DownloadSignedFile",
         "public"),
    Case("DELETE", f"/v1/files/{ID}", f"{FILES}/DeleteFile"),
    Case("GET", "/v1/files/usage", f"{FILES}/GetStorageUsage"),
    Case("POST", "/v1/generations", f"{GENERATION}/CreateGeneration", json_body=GENERATION_REQUEST,
         headers={"Idempotency-Key": ID}),
    Case("GET", f"/v1/generations/{ID}", f"{GENERATION}/GetGeneration"),
    Case("GET", "/v1/generations?status=COMPLETED&pageSize=5", f"{GENERATION}/ListGenerations"),
    Case("POST", f"/v1/generations/{ID}:cancel", f"{GENERATION}/CancelGeneration"),
    Case("GET", f"/v1/generations/{ID}:watch", f"{GENERATION}/WatchGeneration"),
    Case("POST", "/v1/generations:batch", f"{GENERATION}/BatchCreateGenerations",
         json_body={"requests": [GENERATION_REQUEST]}),
    Case("GET", "/v1/styles", f"{GENERATION}/ListStyles", "public"),
    Case("GET", "/v1/models", f"{GENERATION}/ListModels", "public"),
    Case("POST", "/webhooks/replicate", f"{GENERATION}/HandleReplicateWebhook", "public",
         content=b'{"id": "p1", "status": "succeeded"}',
         headers={"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,bad",
                  "Content-Type": "application/json"}),
    Case("GET", "/v1/analytics/usage?action=login&since=2024-01-01T00:00:00Z&pageSize=5",
         f"{ANALYTICS}/ListUsageRecords"),
    Case("GET", "/v1/analytics/metrics?window=24h", f"{ANALYTICS}/GetMetrics"),
    Case("GET", "/v1/analytics/system?window=7d", f"{ANALYTICS}/GetSystemAnalytics", "admin"),
    Case("GET", "/v1/admin/audit?action=auth.login_failed&since=2024-01-01T00:00:00Z&pageSize=5",
         f"{ANALYTICS}/ListAuditEvents", "admin"),
]  # fmt: skip


def server_spans(platform: Platform, trace_id: str) -> list[dict[str, object]]:
    if not platform.trace_file.exists():
        return []
    spans = []
    for line in platform.trace_file.read_text().splitlines():
        if trace_id in line:
            span = json.loads(line)
            if (
                span["trace_id"] == trace_id
                and span["kind"] == "SERVER"
                and span["service"] != "stylestudio-gateway"
            ):
                spans.append(span)
    return spans


async def wait_for_rpc(platform: Platform, trace_id: str, rpc: str) -> list[str]:
    names: list[str] = []
    for _ in range(50):
        names = [str(span["name"]) for span in server_spans(platform, trace_id)]
        if any(name.endswith(rpc) for name in names):
            return names
        await asyncio.sleep(0.1)
    return names


async def send(
    gateway: httpx.AsyncClient, platform: Platform, case: Case, token: bool = True
) -> httpx.Response:
    headers = dict(case.headers)
    if case.who != "public" and token:
        role = "admin" if case.who == "admin" else "user"
        headers["Authorization"] = f"Bearer {platform.user_token(plan='pro', role=role)[1]}"
    method, path = case.method, case.path
    if case.multipart:
        files = {"file": ("p.png", PNG, "image/png")}
        return await gateway.request(
            method, path, data={"category": "product_image"}, files=files, headers=headers
        )
    if case.content is not None:
        return await gateway.request(method, path, content=case.content, headers=headers)
    if case.json_body is not None:
        return await gateway.request(method, path, json=case.json_body, headers=headers)
    return await gateway.request(method, path, headers=headers)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_route_reaches_its_rpc(gateway: httpx.AsyncClient, platform: Platform, case: Case) -> None:
    response = await send(gateway, platform, case)
    assert response.headers["x-request-id"]
    trace_id = response.headers["x-trace-id"]
    names = await wait_for_rpc(platform, trace_id, case.rpc)
    assert any(name.endswith(case.rpc) for name in names), (case, response.status_code, response.text, names)
    assert response.status_code not in (404, 405) or response.json()["error"]["status"] == "NOT_FOUND"
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "status", "reason", "message", "details"}


@pytest.mark.parametrize("case", [case for case in CASES if case.who != "public"], ids=str)
async def test_route_needing_a_user_answers_401_without_a_token(
    gateway: httpx.AsyncClient, platform: Platform, case: Case
) -> None:
    response = await send(gateway, platform, case, token=False)
    assert response.status_code == 401
    assert response.json()["error"]["reason"] == "UNAUTHORIZED"


async def test_dashboard_fans_out_to_every_part(gateway: httpx.AsyncClient, platform: Platform) -> None:
    _, token = platform.user_token()
    response = await gateway.get("/v1/dashboard", headers={"Authorization": f"Bearer {token}"})
    body = response.json()  # a document (failed parts under "errors") or, if every part failed, an error
    assert "errors" in body if response.status_code == 200 else "error" in body
    expected = [
        f"{USERS}/GetMe",
        f"{USERS}/GetMyStats",
        f"{GENERATION}/ListGenerations",
        f"{ANALYTICS}/ListUsageRecords",
        f"{FILES}/GetStorageUsage",
        f"{BILLING}/GetBalance",
        f"{BILLING}/ListPurchases",
    ]
    trace_id = response.headers["x-trace-id"]
    for rpc in expected:
        names = await wait_for_rpc(platform, trace_id, rpc)
        assert any(name.endswith(rpc) for name in names), (rpc, names)


async def test_dashboard_without_a_token_is_401(gateway: httpx.AsyncClient) -> None:
    assert (await gateway.get("/v1/dashboard")).status_code == 401


@pytest.mark.parametrize("path", ["/v1/styles", "/v1/models", "/v1/billing/packages"])
async def test_catalogue_routes_send_cache_headers_and_answer_304(
    gateway: httpx.AsyncClient, path: str
) -> None:
    first = await gateway.get(path)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "public, max-age=300"
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 10
    cached = await gateway.get(path, headers={"If-None-Match": etag})
    assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", etag)
    assert cached.headers["cache-control"] == first.headers["cache-control"]
    stale = await gateway.get(path, headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.content == first.content


async def test_a_users_own_data_is_not_sent_as_cacheable(
    gateway: httpx.AsyncClient, platform: Platform
) -> None:
    token = platform.user_token()[1]
    usage = await gateway.get("/v1/files/usage", headers={"Authorization": f"Bearer {token}"})
    assert usage.status_code == 200, usage.text
    assert "cache-control" not in usage.headers and "etag" not in usage.headers
