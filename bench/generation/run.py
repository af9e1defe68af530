"""Generation throughput through the REST gateway: ``python -m bench.generation``.

Starts the whole platform (tests/harness) on a fresh database with the local provider at
zero added latency, signs ``--clients`` users up through the gateway, grants them tokens
(billing's internal GrantTokens), uploads a product photo each, then every client posts
draft generations one after the other and follows each one over the SSE watch route
until it is terminal. Prints completed generations/s, p50/p99 from POST to COMPLETED,
and where the time goes: the saga's spans (from the platform's trace file) per step.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

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
    env = {} if traces else {"STYLESTUDIO_TRACE_FILE": ""}  # no span file: measures its overhead
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


class Client:
    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self.http, self.headers = http, {"Authorization": f"Bearer {token}"}
        self.product = ""

    async def generate(self) -> tuple[float, str, str]:
        """POST a draft generation and follow it to its end: (seconds, status, generation id)."""
        started = time.perf_counter()
        body = {
            "productImageFiles": [self.product],
            "prompt": "a linen shirt",
            "parameters": {"quality": "draft"},
        }
        posted = await self.http.post("/v1/generations", json=body, headers=self.headers)
        if posted.status_code != 200:
            return time.perf_counter() - started, f"POST {posted.status_code} {posted.text[:200]}", ""
        generation_id = posted.json()["id"]
        status = posted.json()["status"]
        async with self.http.stream(
            "GET", f"/v1/generations/{generation_id}:watch", headers=self.headers
        ) as sse:
            async for line in sse.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])
                    status = data.get("status") or f"stream error {data.get('error', data)}"
        return time.perf_counter() - started, status, generation_id


async def sign_up(platform: Platform, http: httpx.AsyncClient, tokens: int) -> Client:
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
    client = Client(http, body["accessToken"])
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


async def run(clients: int, per_client: int, workers: int, traces: bool) -> None:
    infra = resolve_infrastructure(REPO_ROOT / "data")
    database = TestDatabase(infra.database_url)
    database.create()
    platform = Platform(
        database,
        infra.redis_url,
        Path(tempfile.mkdtemp(prefix="bench-generation-")),
        extra_env=bench_env(workers, traces),
    )
    try:
        await platform.start_all()
        limits = httpx.Limits(max_connections=clients * 3, max_keepalive_connections=clients * 3)
        async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60.0, limits=limits) as http:
            # Sign-ups hash passwords (argon2, deliberately slow): a few at a time.
            signing_up = asyncio.Semaphore(4)

            async def one_user() -> Client:
                async with signing_up:
                    return await sign_up(platform, http, 10 * per_client + 10)

            users = await asyncio.gather(*(one_user() for _ in range(clients)))
            await asyncio.gather(*(user.generate() for user in users))  # warm-up: one each
            platform.trace_file.write_text("")  # only the measured generations' spans
            results: list[tuple[float, str, str]] = []

            async def client_loop(user: Client) -> None:
                for _ in range(per_client):
                    results.append(await user.generate())

            print(f"before: {load()}")
            cpu = ProcessCpu({name: process.pid for name, process in platform.processes.items()})
            cpu.pids["bench client"] = os.getpid()
            cpu.start()
            started = time.perf_counter()
            await asyncio.gather(*(client_loop(user) for user in users))
            elapsed = time.perf_counter() - started
            cpu.stop()
        print(f"after:  {load()}")
        completed = [seconds for seconds, status, _ in results if status == "COMPLETED"]
        print(
            f"{len(results)} generations from {clients} clients through the gateway "
            f"(local provider, draft, {workers} workers) in {elapsed:.1f} s"
        )
        print(f"completed          {len(completed)} ({len(results) - len(completed)} not completed)")
        for status in sorted({status for _, status, _ in results} - {"COMPLETED"})[:5]:
            print(f"  not completed: {status[:300]}")
        print(f"throughput         {len(completed) / elapsed:7.1f} completed generations/s")
        print(
            f"POST -> COMPLETED  p50 {percentile(completed, 0.5) * 1000:7.1f} ms   "
            f"p99 {percentile(completed, 0.99) * 1000:7.1f} ms   max {max(completed) * 1000:7.1f} ms"
        )
        print(cpu.report(len(results), "generation"))
        if not traces:
            return
        await asyncio.sleep(1.0)  # the last spans reach the file
        step_breakdown(platform.trace_file, {generation_id for _, _, generation_id in results})
    finally:
        await platform.close()
        database.drop()
        infra.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=10, help="generations each client runs in turn")
    parser.add_argument("--workers", type=int, default=32, help="STYLESTUDIO_GENERATION_WORKERS")
    parser.add_argument(
        "--no-trace", action="store_true", help="no span file (no breakdown; measures the exporter's cost)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.per_client, args.workers, not args.no_trace))


if __name__ == "__main__":
    main()
