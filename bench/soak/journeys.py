"""A small built-in load for soak runs: users sign up, upload a photo, buy tokens, generate.

The Locust suite (``python -m bench.load``) is the soak's load when it is installed; this one
stands in for it (``--load journeys``) and writes the same files into the run's folder:
``report.json`` (requests/s, p99 per route, journeys completed), ``requests.jsonl`` (every
request answered with a 5xx or not at all) and ``webhooks.jsonl`` (the payment events sent).
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from services.billing.payments import payment_intent_object, sign_payload, stripe_event

PASSWORD = "soak-password-1234"
# A watch or a request left without an answer this long counts as not answered.
REQUEST_TIMEOUT_SECONDS = 30.0


def _photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 400), "teal").save(out, format="JPEG", quality=80)
    return out.getvalue()


class Recorder:
    """Every request's latency per route; the failed ones (5xx, no answer) in requests.jsonl."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.times: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.journeys: Counter[str] = Counter()
        self.failed_journeys: Counter[str] = Counter()
        self.started = time.time()
        self._requests = (out_dir / "requests.jsonl").open("w")
        self._webhooks = (out_dir / "webhooks.jsonl").open("w")

    async def call(
        self, http: httpx.AsyncClient, method: str, route: str, url: str, **options: Any
    ) -> httpx.Response | None:
        started = time.time()
        try:
            response = await http.request(method, url, **options)
        except httpx.HTTPError as error:
            self._failed(method, route, None, "", repr(error))
            return None
        self.times[(method, route)].append((time.time() - started) * 1000)
        if response.status_code >= 400:
            self.errors[f"{response.status_code} {method} {route}"] += 1
        if response.status_code >= 500:
            reason = ""
            try:
                reason = str(response.json().get("error", {}).get("reason", ""))
            except (ValueError, AttributeError):
                pass
            self._failed(method, route, response.status_code, reason, response.text[:300])
        return response

    def _failed(self, method: str, route: str, status: int | None, reason: str, error: str) -> None:
        """``t``: when the answer came (or the client gave up), as the Locust suite records it."""
        self.errors[f"{status or 'no answer'} {method} {route}"] += 1
        line = {
            "t": time.time(),
            "method": method,
            "route": route,
            "status": status,
            "reason": reason,
            "error": error,
        }
        self._requests.write(json.dumps(line) + "\n")
        self._requests.flush()

    def webhook(self, payload: str, purchase_id: str) -> None:
        self._webhooks.write(
            json.dumps({"t": time.time(), "payload": payload, "purchase_id": purchase_id}) + "\n"
        )
        self._webhooks.flush()

    def write(self, users: int) -> dict[str, Any]:
        self._requests.close()
        self._webhooks.close()
        seconds = max(time.time() - self.started, 1e-9)
        routes = []
        for (method, route), times in sorted(self.times.items()):
            ordered = sorted(times)
            routes.append(
                {
                    "method": method,
                    "route": route,
                    "count": len(ordered),
                    "p50_ms": round(ordered[len(ordered) // 2], 1),
                    "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
                }
            )
        total = sum(len(times) for times in self.times.values())
        summary = {
            "users": users,
            "duration_seconds": round(seconds, 1),
            "requests": total,
            "rps": round(total / seconds, 2),
            "routes": routes,
            "errors": dict(self.errors.most_common()),
            "journeys": {"completed": dict(self.journeys), "failed": dict(self.failed_journeys)},
        }
        (self.out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


class User:
    def __init__(self, http: httpx.AsyncClient, recorder: Recorder, secret: str, rng: random.Random) -> None:
        self.http, self.recorder, self.secret, self.rng = http, recorder, secret, rng
        self.headers: dict[str, str] = {}
        self.product = ""

    async def call(self, method: str, route: str, url: str | None = None, **options: Any) -> Any:
        headers = {**self.headers, **options.pop("headers", {})}
        response = await self.recorder.call(
            self.http, method, route, url or route, headers=headers, **options
        )
        if response is None or response.status_code != 200:
            return None
        return response.json()

    async def sign_up(self) -> bool:
        email = f"soak-{uuid.uuid4().hex[:12]}@example.com"
        body = await self.call(
            "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Soak"}
        )
        if body is None:
            return False
        self.headers = {"Authorization": f"Bearer {body['accessToken']}"}
        uploaded = await self.call(
            "POST",
            "/v1/files",
            data={"category": "product_image"},
            files={"file": ("shirt.jpg", _photo(), "image/jpeg")},
        )
        if uploaded is None:
            return False
        self.product = uploaded["id"]
        return True

    async def buy(self) -> bool:
        key = uuid.uuid4().hex
        body = await self.call(
            "POST",
            "/v1/billing/purchases",
            json={"packageName": "starter"},
            headers={"Idempotency-Key": key},
        )
        if body is None:
            return False
        purchase = body["purchase"]
        row = {
            "id": purchase["id"],
            "payment_intent_id": purchase.get("paymentIntentId", ""),
            "amount_cents": int(purchase["amountCents"]),
            "currency": purchase["currency"],
            "package_name": purchase["packageName"],
        }
        payload = json.dumps(
            stripe_event("payment_intent.succeeded", payment_intent_object(row, "succeeded"))
        )
        self.recorder.webhook(payload, purchase["id"])
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": sign_payload(payload.encode(), self.secret),
        }
        answer = await self.recorder.call(
            self.http, "POST", "/webhooks/stripe", "/webhooks/stripe", content=payload, headers=headers
        )
        return answer is not None and answer.status_code == 200

    async def generate(self) -> bool:
        body = {
            "productImageFiles": [self.product],
            "prompt": "a linen shirt",
            "parameters": {"quality": "draft"},
        }
        posted = await self.call("POST", "/v1/generations", json=body)
        if posted is None:
            return False
        generation_id = posted["id"]
        if self.rng.random() < 0.1:
            await self.call("POST", "/v1/generations/{id}:cancel", f"/v1/generations/{generation_id}:cancel")
        status = posted["status"]
        started = time.time()
        try:
            async with self.http.stream(
                "GET", f"/v1/generations/{generation_id}:watch", headers=self.headers
            ) as sse:
                async for line in sse.aiter_lines():
                    if line.startswith("data:"):
                        status = json.loads(line[5:]).get("status") or status
        except httpx.HTTPError:
            pass  # a watch cut by a fault: the generation is read below
        self.recorder.times[("GET", "/v1/generations/{id}:watch")].append((time.time() - started) * 1000)
        final = await self.call("GET", "/v1/generations/{id}", f"/v1/generations/{generation_id}")
        if final is not None:
            status = final["status"]
        return status in ("COMPLETED", "FAILED", "CANCELED")

    async def browse(self) -> bool:
        results = await asyncio.gather(
            self.call("GET", "/v1/billing/balance"),
            self.call("GET", "/v1/generations", params={"pageSize": 10}),
            self.call("GET", "/v1/files/usage"),
        )
        return all(result is not None for result in results)


async def _journey(recorder: Recorder, name: str, step: Any) -> None:
    try:
        completed = await step()
    except (httpx.HTTPError, KeyError, ValueError):
        completed = False
    (recorder.journeys if completed else recorder.failed_journeys)[name] += 1


async def run_journeys(
    gateway_url: str, users: int, duration: float, out_dir: Path, secret: str, seed: int
) -> dict[str, Any]:
    """``users`` users, each signing up then looping over weighted journeys for ``duration`` s."""
    recorder = Recorder(out_dir)
    ends = time.monotonic() + duration
    limits = httpx.Limits(max_connections=users * 4, max_keepalive_connections=users * 4)

    async with httpx.AsyncClient(
        base_url=gateway_url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits
    ) as http:

        async def one(index: int) -> None:
            user = User(http, recorder, secret, random.Random(seed * 1000 + index))
            while time.monotonic() < ends and not user.headers:
                await _journey(recorder, "sign_up", user.sign_up)
                if not user.headers or not user.product:
                    user.headers = {}
                    await asyncio.sleep(1.0)
            while time.monotonic() < ends:
                pick = user.rng.random()
                if pick < 0.15:
                    await _journey(recorder, "buy_tokens", user.buy)
                elif pick < 0.7:
                    await _journey(recorder, "generate", user.generate)
                else:
                    await _journey(recorder, "browse", user.browse)
                await asyncio.sleep(user.rng.uniform(0.1, 0.5))

        await asyncio.gather(*(one(index) for index in range(users)))
    return recorder.write(users)
