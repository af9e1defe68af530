"""Generation throughput through the REST gateway: ``python -m bench.generation``.

Starts the whole platform (tests/harness) on a fresh database with the local provider at
zero added latency, signs ``--clients`` users up through the gateway, grants them tokens
(billing's internal GrantTokens), uploads a product photo each, then every client posts
draft generations one after the other and follows each one over the SSE watch route
until it is terminal. Prints completed generations/s, p50/p99 from POST to COMPLETED,
and where the time goes: the saga's spans (from the platform's trace file) per step.
The client is a polite one: a 429 or 503 with a short Retry-After is waited for (with
jitter) and retried, a few times at most; POSTs carry an Idempotency-Key. ``bench.overload``
runs the same measurement quiet and beside a database-heavy load.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.cpu import ProcessCpu
from kit.infra import resolve_infrastructure
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from tests.harness import Platform, TestDatabase

REPO_ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "bench-password-1234"


def bench_env(workers: int, traces: bool) -> dict[str, str]:
    limits = {plan: 1_000_000 for plan in ("free", "basic", "pro", "enterprise")}
    # no span file nor span store: measures their overhead
    env = {} if traces else {"STYLESTUDIO_TRACE_FILE": "", "STYLESTUDIO_SPAN_STORE_DIR": ""}
    return env | {
        "STYLESTUDIO_LOG_LEVEL": "WARNING",
        "STYLESTUDIO_LOCAL_PROVIDER_LATENCY_SECONDS": "0",
        "STYLESTUDIO_HOURLY_GENERATION_LIMITS": json.dumps(limits),
        "STYLESTUDIO_GENERATION_WORKERS": str(workers),
    }


def product_photo() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (480, 640), "navy").save(out, format="JPEG", quality=85)
    return out.getvalue()


# A polite client (as bench/load's): a 429 or 503 with a Retry-After of at most
# MAX_RETRY_WAIT_SECONDS is waited for, plus jitter, and retried, MAX_ATTEMPTS attempts in all.
MAX_ATTEMPTS = 4
MAX_RETRY_WAIT_SECONDS = 5.0
IN_PROGRESS_PATIENCE_SECONDS = 60.0
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
# A generation not terminal after this long is reported as such (not waited for forever).
GIVE_UP_SECONDS = 300.0


def error_reason(response: httpx.Response) -> str:
    """The ``reason`` of the API's error body (API.md), or ""."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("reason") or error.get("status") or "") if isinstance(error, dict) else ""


def retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


@dataclass
class Answers:
    """What the gateway answered, counted by (method and route, status, reason): ``final``
    answers, and ``shed`` ones (a 429 or 503 with Retry-After the client waited for and retried).
    ``stream_errors``: watch streams that ended on an error event or before a terminal status."""

    final: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    shed: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    stream_errors: Counter[str] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)

    def server_errors(self) -> Counter[tuple[str, int, str]]:
        return Counter({key: n for key, n in self.final.items() if key[1] >= 500})


async def polite(
    http: httpx.AsyncClient, answers: Answers, route: str, method: str, url: str, **options: Any
) -> httpx.Response:
    """One call, asked again after a 429/503 with a short Retry-After (bounded, jittered), and
    after a 409 with Retry-After (the same Idempotency-Key's first request still starting:
    that one may take as long as a start does, so for up to IN_PROGRESS_PATIENCE_SECONDS)."""
    started, attempt = time.monotonic(), 0
    while True:
        attempt += 1
        try:
            response = await http.request(method, url, **options)
        except httpx.TransportError as error:
            answers.no_answer[f"{route} {type(error).__name__}"] += 1
            raise
        wait = retry_after(response)
        code = response.status_code
        again = (
            wait is not None
            and wait <= MAX_RETRY_WAIT_SECONDS
            and (
                (code in (429, 503) and attempt < MAX_ATTEMPTS)
                or (code == 409 and time.monotonic() - started < IN_PROGRESS_PATIENCE_SECONDS)
            )
        )
        if again and wait is not None:
            answers.shed[(route, code, error_reason(response))] += 1
            await asyncio.sleep(wait + random.uniform(0.0, max(wait, 0.5)))
            continue
        answers.final[(route, code, error_reason(response))] += 1
        return response


class Client:
    def __init__(self, http: httpx.AsyncClient, token: str, answers: Answers) -> None:
        self.http, self.headers = http, {"Authorization": f"Bearer {token}"}
        self.answers = answers
        self.product = ""

    async def generate(self) -> tuple[float, str, str]:
        """POST a draft generation and follow it to its end: (seconds, status, generation id).

        The POST carries an Idempotency-Key, so retrying it after a 429/503 cannot start a
        second generation; a watch stream that ends early is opened again (a few times)."""
        started = time.perf_counter()
        body = {
            "productImageFiles": [self.product],
            "prompt": "a linen shirt",
            "parameters": {"quality": "draft"},
        }
        headers = self.headers | {"Idempotency-Key": uuid.uuid4().hex}
        try:
            posted = await polite(
                self.http,
                self.answers,
                "POST /v1/generations",
                "POST",
                "/v1/generations",
                json=body,
                headers=headers,
            )
        except httpx.TransportError as error:
            return time.perf_counter() - started, f"POST no answer: {type(error).__name__}", ""
        if posted.status_code != 200:
            return time.perf_counter() - started, f"POST {posted.status_code} {posted.text[:200]}", ""
        generation_id = posted.json()["id"]
        status = posted.json()["status"]
        try:
            async with asyncio.timeout(GIVE_UP_SECONDS):
                for _ in range(MAX_ATTEMPTS):
                    status = await self._watch(generation_id, status)
                    if status in TERMINAL:
                        break
        except TimeoutError:
            status = await self._current(generation_id, status)
            if status not in TERMINAL:
                self.answers.stream_errors[f"gave up after {GIVE_UP_SECONDS:.0f} s"] += 1
        return time.perf_counter() - started, status, generation_id

    async def _current(self, generation_id: str, status: str) -> str:
        got = await self.http.get(f"/v1/generations/{generation_id}", headers=self.headers)
        return str(got.json().get("status", status)) if got.status_code == 200 else status

    async def _watch(self, generation_id: str, status: str) -> str:
        route = "GET /v1/generations/{id}:watch"
        url = f"/v1/generations/{generation_id}:watch"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.http.stream("GET", url, headers=self.headers) as sse:
                    wait = retry_after(sse)
                    if sse.status_code in (429, 503) and wait is not None and attempt < MAX_ATTEMPTS:
                        await sse.aread()
                        self.answers.shed[(route, sse.status_code, error_reason(sse))] += 1
                        await asyncio.sleep(min(wait, MAX_RETRY_WAIT_SECONDS) + random.uniform(0.0, 1.0))
                        continue
                    if sse.status_code != 200:
                        await sse.aread()
                    self.answers.final[
                        (route, sse.status_code, error_reason(sse) if sse.status_code != 200 else "")
                    ] += 1
                    async for line in sse.aiter_lines():
                        if line.startswith("data:"):
                            data = json.loads(line[5:])
                            if data.get("status"):
                                status = data["status"]
                            else:
                                self.answers.stream_errors[str(data.get("error", data))[:160]] += 1
            except httpx.TransportError as error:
                self.answers.stream_errors[f"transport {type(error).__name__}"] += 1
            if status not in TERMINAL:
                self.answers.stream_errors[f"ended at {status}"] += 1
            return status
        return status


async def sign_up(platform: Platform, http: httpx.AsyncClient, tokens: int, answers: Answers) -> Client:
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    signed = await http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Bench"})
    signed.raise_for_status()
    body = signed.json()
    billing = platform.stub("billing", billing_pb2_grpc.BillingServiceStub)
    await billing.GrantTokens(
        billing_pb2.GrantTokensRequest(
            user_id=body["user"]["id"], amount=tokens, reason="benchmark", idempotency_key=email
        )
    )
    client = Client(http, body["accessToken"], answers)
    uploaded = await http.post(
        "/v1/files",
        headers=client.headers,
        data={"category": "product_image"},
        files={"file": ("shirt.jpg", product_photo(), "image/jpeg")},
    )
    uploaded.raise_for_status()
    client.product = uploaded.json()["id"]
    return client


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def step_breakdown(trace_file: Path, generation_ids: set[str]) -> None:
    """Per (service, span) durations over the traces of the measured generations."""
    spans = [json.loads(line) for line in trace_file.read_text().splitlines() if line]
    traces = {
        s["trace_id"] for s in spans if s["attributes"].get("stylestudio.generation.id") in generation_ids
    }
    durations: dict[tuple[str, str], list[float]] = defaultdict(list)
    for span in spans:
        if span["trace_id"] in traces and span["end_ns"]:
            key = (str(span["service"]).removeprefix("stylestudio-"), span["name"])
            durations[key].append((span["end_ns"] - span["start_ns"]) / 1e6)
    print(f"\nwhere the time goes ({len(traces)} traces; span durations in ms, per span)")
    print(f"{'service':11s} {'span':58s} {'count':>6s} {'p50':>8s} {'p99':>8s} {'mean':>8s}")
    rows = sorted(durations.items(), key=lambda item: -sum(item[1]) / max(1, len(generation_ids)))
    for (service, name), values in rows[:30]:
        print(
            f"{service:11s} {name[:58]:58s} {len(values):6d} {percentile(values, 0.5):8.1f} "
            f"{percentile(values, 0.99):8.1f} {sum(values) / len(values):8.1f}"
        )


def load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


@dataclass
class Measured:
    """One measured run: each generation's (seconds, final status, id), and what was answered."""

    results: list[tuple[float, str, str]]
    elapsed: float
    answers: Answers
    cpu: ProcessCpu
    loads: tuple[str, str]

    @property
    def completed(self) -> list[float]:
        return [seconds for seconds, status, _ in self.results if status == "COMPLETED"]

    @property
    def rate(self) -> float:
        return len(self.completed) / self.elapsed

    @property
    def generation_ids(self) -> set[str]:
        return {generation_id for _, _, generation_id in self.results if generation_id}


@asynccontextmanager
async def bench_platform(
    workers: int, traces: bool, prefix: str
) -> AsyncIterator[tuple[Platform, TestDatabase]]:
    """The whole platform on a fresh database, configured for the benchmark; removed afterwards."""
    infra = resolve_infrastructure(REPO_ROOT / "data")
    database = TestDatabase(infra.database_url)
    database.create()
    platform = Platform(
        database, infra.redis_url, Path(tempfile.mkdtemp(prefix=prefix)), extra_env=bench_env(workers, traces)
    )
    try:
        await platform.start_all()
        yield platform, database
    finally:
        await platform.close()
        database.drop()
        infra.close()


def bench_http(platform: Platform, clients: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients * 3, max_keepalive_connections=clients * 3)
    return httpx.AsyncClient(base_url=platform.gateway_url, timeout=60.0, limits=limits)


async def sign_up_all(
    platform: Platform, http: httpx.AsyncClient, clients: int, tokens: int, answers: Answers
) -> list[Client]:
    """``clients`` users with ``tokens`` each and a product photo, then one warm-up generation each."""
    # Sign-ups hash passwords (argon2, deliberately slow): a few at a time.
    signing_up = asyncio.Semaphore(4)

    async def one_user() -> Client:
        async with signing_up:
            return await sign_up(platform, http, tokens, answers)

    users = await asyncio.gather(*(one_user() for _ in range(clients)))
    await asyncio.gather(*(user.generate() for user in users))  # warm-up: one each
    return users


async def measure(platform: Platform, users: list[Client], per_client: int) -> Measured:
    """Every client runs ``per_client`` generations in turn; CPU of the platform and the client."""
    answers = Answers()
    for user in users:
        user.answers = answers
    results: list[tuple[float, str, str]] = []

    async def client_loop(user: Client) -> None:
        for _ in range(per_client):
            results.append(await user.generate())

    before = load()
    cpu = ProcessCpu({name: process.pid for name, process in platform.processes.items()})
    cpu.pids["bench client"] = os.getpid()
    cpu.start()
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(user) for user in users))
    elapsed = time.perf_counter() - started
    cpu.stop()
    return Measured(results, elapsed, answers, cpu, (before, load()))


def report(measured: Measured, clients: int, workers: int) -> None:
    results, completed = measured.results, measured.completed
    print(f"before: {measured.loads[0]}")
    print(f"after:  {measured.loads[1]}")
    print(
        f"{len(results)} generations from {clients} clients through the gateway "
        f"(local provider, draft, {workers} workers) in {measured.elapsed:.1f} s"
    )
    print(f"completed          {len(completed)} ({len(results) - len(completed)} not completed)")
    for status in sorted({status for _, status, _ in results} - {"COMPLETED"})[:5]:
        print(f"  not completed: {status[:300]}")
    print(f"throughput         {measured.rate:7.1f} completed generations/s")
    if completed:
        print(
            f"POST -> COMPLETED  p50 {percentile(completed, 0.5) * 1000:7.1f} ms   "
            f"p99 {percentile(completed, 0.99) * 1000:7.1f} ms   max {max(completed) * 1000:7.1f} ms"
        )
    print(measured.cpu.report(len(results), "generation"))


async def run(clients: int, per_client: int, workers: int, traces: bool) -> None:
    async with (
        bench_platform(workers, traces, "bench-generation-") as (platform, _),
        bench_http(platform, clients) as http,
    ):
        users = await sign_up_all(platform, http, clients, 10 * per_client + 10, Answers())
        platform.trace_file.write_text("")  # only the measured generations' spans
        measured = await measure(platform, users, per_client)
        report(measured, clients, workers)
        if traces:
            await asyncio.sleep(1.0)  # the last spans reach the file
            step_breakdown(platform.trace_file, measured.generation_ids)
