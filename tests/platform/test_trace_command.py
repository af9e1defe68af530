"""`stylestudio trace` after one generation on a platform keeping spans as `make run` does (its span
store under the data directory), and what those spans must never hold (personal data)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kit.cli import COMMANDS, main
from kit.spanstore import SpanStore
from tests.harness import Platform
from tests.harness.rest import PASSWORD

STYLESTUDIO = Path(sys.executable).with_name("stylestudio")
# A client address the journey claims (the tests' peer, 127.0.0.1, is checked for too).
FORWARDED_FOR = "203.0.113.77"


@dataclass(frozen=True)
class Journey:
    email: str
    prompt: str
    generation_id: str
    trace_id: str
    request_id: str
    spans: list[dict[str, Any]]
    # Every request of the journey (sign-up, log-in, upload, start), by its X-Request-Id.
    request_ids: list[str]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 320), "green").save(out, format="PNG")
    return out.getvalue()


def stylestudio(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, as an operator runs it."""
    return subprocess.run(
        [str(STYLESTUDIO), *args], capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )


async def _eventually(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.3)


def _complete(spans: list[dict[str, Any]] | None) -> bool:
    """The trace holds what the test asks for (its last spans are written as their roots end)."""
    if not spans:
        return False
    services = {span["service"].removeprefix("stylestudio-") for span in spans}
    kinds = {span["kind"] for span in spans}
    captured = any("CaptureHold" in span["name"] for span in spans)
    return (
        {"gateway", "generation", "billing", "files"} <= services
        and {"PRODUCER", "CONSUMER"} <= kinds
        and captured
    )


@pytest.fixture(scope="module")
async def journey(platform: Platform) -> Journey:
    """A user signs up and logs in, uploads a photo and runs one generation, through the gateway."""
    email = f"trace.{uuid.uuid4().hex[:10]}@example.com"
    prompt = f"a linen summer dress {uuid.uuid4().hex[:8]}"
    headers = {"X-Forwarded-For": FORWARDED_FOR}
    async with platform.client(headers=headers) as gateway:
        signed_up = await gateway.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Trace Test"}
        )
        assert signed_up.status_code == 200, signed_up.text
        login = await gateway.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['accessToken']}"}

        async def welcomed() -> bool:
            balance = (await gateway.get("/v1/billing/balance", headers=auth)).json()
            return int(balance.get("balance", 0)) > 0

        await _eventually(welcomed)
        uploaded = await gateway.post(
            "/v1/files",
            headers=auth,
            data={"category": "product_image"},
            files={"file": ("dress.png", _png(), "image/png")},
        )
        assert uploaded.status_code == 200, uploaded.text
        body = {
            "productImageFiles": [uploaded.json()["id"]],
            "prompt": prompt,
            "parameters": {"quality": "draft"},
        }
        started = await gateway.post("/v1/generations", json=body, headers=auth)
        assert started.status_code == 200, started.text
        generation_id = started.json()["id"]

        async def finished() -> bool:
            status = (await gateway.get(f"/v1/generations/{generation_id}", headers=auth)).json()["status"]
            assert status not in ("FAILED", "CANCELED"), status
            return bool(status == "COMPLETED")

        await _eventually(finished)
    store = SpanStore(platform.span_store_dir)

    async def whole_trace() -> list[dict[str, Any]] | None:
        spans = store.find(generation_id)
        # analytics handles the generation's events in batches, in traces that link to this one
        return spans if _complete(spans) and store.linking_to(str(spans[0]["trace_id"])) else None  # type: ignore[index]

    spans = await _eventually(whole_trace)
    return Journey(
        email=email,
        prompt=prompt,
        generation_id=generation_id,
        trace_id=started.headers["x-trace-id"],
        request_id=started.headers["x-request-id"],
        spans=spans,
        request_ids=[r.headers["x-request-id"] for r in (signed_up, login, uploaded, started)],
    )


def _operator_env(platform: Platform) -> dict[str, str]:
    """An operator's shell beside `make run`: the data directory set, not the span store itself."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STYLESTUDIO_")}
    return env | {"STYLESTUDIO_DATA_DIR": str(platform.data_dir), "NO_COLOR": "1"}


def _span_lines(text: str) -> list[tuple[str, str, str]]:
    """The tree's span lines as (marks, service, the rest): kit/tracetree.py's fixed columns."""
    rows = []
    for line in text.splitlines()[2:]:
        if line[3:25].strip():  # notes under a span leave the offset and duration columns empty
            service, _, rest = line[26:].partition(" ")
            rows.append((line[:2], service, rest.strip()))
    return rows


async def test_trace_prints_a_generations_tree(platform: Platform, journey: Journey) -> None:
    shown = stylestudio("trace", journey.generation_id, env=_operator_env(platform))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"trace {journey.trace_id}: ")
    rows = _span_lines(shown.stdout)
    assert len(rows) >= len(journey.spans), shown.stdout
    assert {"gateway", "generation", "billing", "files"} <= {service for _, service, _ in rows}
    assert "-> queue jobs.generation" in shown.stdout
    assert "<- hop generation -> jobs.generation -> generation" in shown.stdout
    critical = [rest for marks, _, rest in rows if marks.startswith("*")]
    assert critical[0].startswith("POST /v1/generations"), shown.stdout
    assert any("CaptureHold" in rest for rest in critical), shown.stdout
    assert f"generation={journey.generation_id}" in shown.stdout
    assert "linked from analytics process batch (trace " in shown.stdout, shown.stdout


async def test_trace_json_by_trace_id_and_request_id(platform: Platform, journey: Journey) -> None:
    directory = str(platform.span_store_dir)
    by_trace = stylestudio("trace", journey.trace_id, "--json", "--dir", directory)
    assert by_trace.returncode == 0, by_trace.stderr
    printed = json.loads(by_trace.stdout)
    assert set(printed) == {"trace_id", "spans"} and printed["trace_id"] == journey.trace_id
    assert {span["span_id"] for span in printed["spans"]} >= {span["span_id"] for span in journey.spans}
    for span in printed["spans"]:
        assert {"links", "events", "status_message"} <= set(span) and isinstance(span["critical"], bool)
    by_request = stylestudio("trace", journey.request_id, "--json", "--dir", directory)
    assert by_request.returncode == 0, by_request.stderr
    assert json.loads(by_request.stdout)["trace_id"] == journey.trace_id


async def test_an_unknown_id_fails_with_a_clear_message(platform: Platform) -> None:
    unknown = str(uuid.uuid4())
    shown = stylestudio("trace", unknown, "--dir", str(platform.span_store_dir))
    assert shown.returncode != 0 and shown.stdout == ""
    assert f"no trace for '{unknown}'" in shown.stderr and "Traceback" not in shown.stderr


async def test_spans_hold_no_personal_data(platform: Platform, journey: Journey) -> None:
    """Ids only: no email, password, prompt or client address in any span of the journey's traces
    (sign-up, log-in, upload, generation); no email or prompt anywhere in the store or trace file."""
    store = SpanStore(platform.span_store_dir)
    traces = [store.find(request_id) for request_id in journey.request_ids]
    assert all(traces) and journey.spans[0]["trace_id"] in {trace[0]["trace_id"] for trace in traces if trace}
    journey_text = json.dumps(traces)
    assert journey.generation_id in journey_text
    local_part = journey.email.split("@")[0]
    for secret in (journey.email, local_part, PASSWORD, journey.prompt, FORWARDED_FOR, "127.0.0.1"):
        assert secret not in journey_text, secret
    for text in ("\n".join(store.lines()), platform.trace_file.read_text()):
        assert journey.generation_id in text
        for secret in (journey.email, local_part, journey.prompt):
            assert secret not in text, secret


def test_each_command_is_wired(
    platform: Platform, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The console script lists every command; each parses its own options (in this process: the
    same ``kit.cli.main``, without a start-up per command); reconcile runs against the platform."""
    listing = stylestudio("--help")
    assert listing.returncode == 0
    for command in [*COMMANDS, "trace"]:
        assert f"    {command}" in listing.stdout, command
        with pytest.raises(SystemExit) as helped:
            main([command, "--help"])
        assert helped.value.code == 0 and capsys.readouterr().out.startswith(f"usage: stylestudio {command}")
    for variable, value in platform.env("billing").items():
        if variable.startswith("STYLESTUDIO_"):
            monkeypatch.setenv(variable, value)
    assert main(["reconcile"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" wallets checked, 0 out of balance")
