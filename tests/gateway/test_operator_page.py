"""The operator page (/operator) in headless Chromium, and its trace route, on the real platform.

One real generation (local provider) by a signed-up user; an account promoted to admin on the
command line, as operators do. Chromium is Debian's (`make chromium`), driven by playwright
with no browser of its own: the test fails, never skips, when it is missing.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.async_api import ConsoleMessage, Error, Page, async_playwright

from gateway.descriptors import ApiDescriptors
from gateway.settings import DEFAULT_DESCRIPTOR_SET
from tests.gateway.conftest import gateway_settings, run_gateway
from tests.harness import Platform
from tests.harness.platform import REPO_ROOT
from tests.harness.rest import PASSWORD, sign_up

CHARTS = ("trends", "errors", "tokens", "models")
# The operators' command line (make install), beside this interpreter.
STYLESTUDIO = str(Path(sys.executable).with_name("stylestudio"))


@dataclass(frozen=True)
class Journey:
    generation_id: str
    user_token: str
    admin_token: str


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 320), "teal").save(out, format="PNG")
    return out.getvalue()


async def _until(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not seen within {timeout} s")


async def _log_in(gateway: httpx.AsyncClient, email: str) -> str:
    response = await gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["accessToken"])


@pytest.fixture(scope="module")
async def journey(platform: Platform) -> Journey:
    """A user's completed generation, and an admin signed in, on the session's platform."""
    async with platform.client() as gateway:
        user = await sign_up(gateway)
        user_auth = _auth(user["accessToken"])
        upload = await gateway.post(
            "/v1/files",
            data={"category": "product_image"},
            files={"file": ("dress.png", _png(), "image/png")},
            headers=user_auth,
        )
        assert upload.status_code == 200, upload.text
        started = await gateway.post(
            "/v1/generations",
            json={"productImageFiles": [upload.json()["id"]], "prompt": "a dress in a studio"},
            headers=user_auth | {"Idempotency-Key": str(uuid.uuid4())},
        )
        assert started.status_code == 200, started.text
        generation_id = str(started.json()["id"])

        async def finished() -> dict[str, Any] | None:
            generation = (await gateway.get(f"/v1/generations/{generation_id}", headers=user_auth)).json()
            return generation if generation["status"] in ("COMPLETED", "FAILED", "CANCELED") else None

        assert (await _until(finished, "the generation's end"))["status"] == "COMPLETED"

        admin_email = f"operator.{uuid.uuid4().hex[:12]}@example.com"
        await sign_up(gateway, admin_email)
        promoted = await asyncio.to_thread(
            subprocess.run,
            [STYLESTUDIO, "admin", "promote", "--email", admin_email],
            cwd=REPO_ROOT,
            env=platform.env("users"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert promoted.returncode == 0, promoted.stderr
        admin_token = await _log_in(gateway, admin_email)

        async def counted() -> bool:
            system = await gateway.get("/v1/analytics/system", headers=_auth(admin_token))
            assert system.status_code == 200, system.text
            return bool(system.json()["popularModels"])

        await _until(counted, "the generation in the system analytics")
        return Journey(generation_id, user["accessToken"], admin_token)


async def test_the_trace_route_answers_admins_only_with_the_error_body(
    platform: Platform, journey: Journey
) -> None:
    route = f"/v1/admin/traces/{journey.generation_id}"
    async with platform.client() as gateway:
        anonymous = await gateway.get(route)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["reason"] == "UNAUTHORIZED"
        user = await gateway.get(route, headers=_auth(journey.user_token))
        assert user.status_code == 403
        assert user.json()["error"] == {
            "code": 403,
            "status": "PERMISSION_DENIED",
            "reason": "FORBIDDEN",
            "message": "Admins only",
            "details": {},
        }
        forged = await gateway.get(route, headers=_auth("not-a-real-token"))
        assert forged.status_code == 401

        unknown = await gateway.get(f"/v1/admin/traces/{uuid.uuid4()}", headers=_auth(journey.admin_token))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["reason"] == "NOT_FOUND"
        assert set(unknown.json()["error"]) == {"code", "status", "reason", "message", "details"}
        spaced = await gateway.get("/v1/admin/traces/a%20b", headers=_auth(journey.admin_token))
        assert spaced.status_code == 400 and spaced.json()["error"]["details"] == {"field": "id"}
        found = await gateway.get(route, headers=_auth(journey.admin_token))
        assert found.status_code == 200, found.text
        assert found.json()["spans"] and found.json()["trace_id"]
        assert (await gateway.post(route, headers=_auth(journey.admin_token))).status_code == 405
        openapi = (await gateway.get("/openapi.json")).json()
        assert openapi["paths"]["/v1/admin/traces/{id}"]["get"]["x-access"] == "ACCESS_ADMIN"
        page = await gateway.get("/operator")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]


async def test_a_gateway_without_a_local_span_store_says_so(platform: Platform, journey: Journey) -> None:
    """Production: traces go to the collector and Jaeger; the route says where, and is no 500."""
    descriptors = ApiDescriptors.from_file(DEFAULT_DESCRIPTOR_SET)
    targets = {m.service: platform.addresses[m.service.split(".")[1]] for m in descriptors.methods}
    settings = gateway_settings(span_store_dir="", **platform.key_settings("gateway"))
    running = await run_gateway(DEFAULT_DESCRIPTOR_SET, targets, settings)
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30.0) as gateway:
            route = f"/v1/admin/traces/{journey.generation_id}"
            assert (await gateway.get(route, headers=_auth(journey.user_token))).status_code == 403
            answer = await gateway.get(route, headers=_auth(journey.admin_token))
    finally:
        await running.close()
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["reason"] == "SERVICE_UNAVAILABLE" and error["details"] == {"dependency": "span_store"}
    assert "Jaeger" in error["message"] and "retry-after" not in answer.headers


def _cli_trace(platform: Platform, ident: str) -> dict[str, Any]:
    """What `stylestudio trace --json` prints for ``ident`` from the platform's span store."""
    printed = subprocess.run(
        [STYLESTUDIO, "trace", ident, "--json", "--dir", str(platform.span_store_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(printed.stdout))


# Each chart's labels and data, and how many of its canvas's pixels are painted.
_CHARTS_DRAWN = """names => Object.fromEntries(names.map(name => {
    const canvas = document.getElementById(`chart-${name}`);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
    const chart = Chart.getChart(canvas);
    return [name, {painted, labels: chart.data.labels, data: chart.data.datasets.map(set => set.data)}];
}))"""
_SPAN_IDS = "rows => rows.map(row => row.dataset.spanId)"
_CHART_READY = "name => Chart.getChart(document.getElementById(`chart-${name}`)) !== undefined"


async def _sign_in_and_check_the_charts(page: Page, admin_token: str) -> None:
    """Signs in with the token; each chart shows what GET /v1/analytics/system answered the page."""
    await page.fill("#token", admin_token)
    async with page.expect_response(lambda r: "/v1/analytics/system" in r.url) as answered:
        await page.click("#token-form button")
    system = await (await answered.value).json()
    for chart in CHARTS:
        await page.wait_for_function(_CHART_READY, arg=chart)
    drawn = await page.evaluate(_CHARTS_DRAWN, list(CHARTS))
    trends = system["generationTrends"]
    assert drawn["trends"]["labels"] == [point["day"] for point in trends]
    assert drawn["trends"]["data"][1] == [point["completed"] for point in trends]
    assert sum(drawn["trends"]["data"][1]) >= 1
    assert drawn["errors"]["labels"] == [entry["reason"] for entry in system["errorRates"]]
    assert drawn["models"]["labels"] == [entry["model"] for entry in system["popularModels"]]
    assert drawn["models"]["data"][0] == [entry["count"] for entry in system["popularModels"]]
    usage = system["tokenUsage"]
    kinds = ("purchased", "granted", "spent", "refunded")
    assert drawn["tokens"]["data"][0] == [int(usage.get(kind, 0)) for kind in kinds]
    assert all(drawn[chart]["painted"] > 0 for chart in CHARTS), drawn


async def _show_the_trace(page: Page, platform: Platform, ident: str) -> None:
    """The waterfall has one row per span that `stylestudio trace --json` prints for ``ident``.

    The trace may still be growing (consumers finishing late): the command's output is read
    before and after the page's own read, and compared when both agree."""
    for _ in range(10):
        before = await asyncio.to_thread(_cli_trace, platform, ident)
        await page.fill("#trace-id", ident)
        async with page.expect_response(lambda r: "/v1/admin/traces/" in r.url) as traced:
            await page.click("#trace-form button")
        assert (await traced.value).status == 200
        await page.wait_for_selector(".span-row")
        shown = await page.eval_on_selector_all(".span-row", _SPAN_IDS)
        after = await asyncio.to_thread(_cli_trace, platform, ident)
        if len(before["spans"]) == len(after["spans"]):
            break
    assert len(shown) == len(after["spans"]) > 1
    assert sorted(shown) == sorted(span["span_id"] for span in after["spans"])
    critical = await page.eval_on_selector_all(".span-row.critical", _SPAN_IDS)
    assert critical and sorted(critical) == sorted(s["span_id"] for s in after["spans"] if s["critical"])
    summary = await page.text_content("#trace-summary")
    assert summary is not None and after["trace_id"] in summary
    await page.locator(".span-row").first.click()
    assert await page.locator("#span-detail table").count() == 1


async def test_the_operator_page_draws_a_real_generations_waterfall_and_the_charts(
    platform: Platform, journey: Journey, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None, "Debian's chromium is missing: run `make chromium`"
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    def on_page_error(error: Error) -> None:
        problems.append(f"page error: {error}")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            await page.goto(f"{platform.gateway_url}/operator")
            await _sign_in_and_check_the_charts(page, journey.admin_token)
            await _show_the_trace(page, platform, journey.generation_id)
            screenshot = tmp_path / "operator-page.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            print(f"operator page screenshot: {screenshot}")
            assert screenshot.stat().st_size > 10_000
        finally:
            await browser.close()
    assert problems == []
