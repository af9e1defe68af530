"""Prometheus metrics of every process: the instruments the kit records, who may read them, and
the HTTP port a service serves them on.

- ``RpcMetrics``: RED per RPC, recorded by the kit's server interceptor (kit/interceptors.py),
  named after OpenTelemetry's RPC metric ``rpc.server.duration`` as its Prometheus exporter
  writes it (``rpc_server_duration_seconds``; seconds, Prometheus's base unit, where the
  convention says ms) with the span's attributes as labels: ``rpc_system``, ``rpc_service``,
  ``rpc_method``, ``rpc_grpc_status_code`` (the number, as on the spans). The histogram's
  ``_count`` is the request count, so there is no second counter to keep in step.
- ``LabelledChildren``: a metric's label children, cached (the gateway's metrics use it too).
- ``MetricsAccess``: who may read a metrics endpoint, the gateway's and the services' alike.
- ``MetricsEndpoint``: ``GET /metrics`` on a service's own port (``STYLESTUDIO_METRICS_ADDR``),
  served by a thread of its own so a scrape is answered even while the event loop is busy.
  Figures that cost a query (outbox, consumer groups, holds ...) are read on scrape by the
  service's samplers (kit/process_metrics.py), at most once per ``metrics_refresh_seconds``.

docs/operations.md, "Metrics", lists every metric.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import make_wsgi_app

from kit.errors import Reason

log = logging.getLogger("stylestudio.metrics")

METRICS_PATH = "/metrics"
# Seconds; from a cached read (0.5 ms) to a generation's start waiting on a busy dependency.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# How long a scrape waits for the samplers' figures before answering with the previous ones.
SAMPLE_TIMEOUT_SECONDS = 2.0


# Webhooks whose signature, timestamp or body did not verify (Stripe at billing, Replicate at
# generation): a service that verifies webhooks registers it (ServiceMetrics.register).
webhook_verification_failures = Counter(
    "stylestudio_webhook_verifications_failed",
    "Webhooks refused because their signature, timestamp or body did not verify, by provider.",
    ["provider"],
    registry=None,
)


class LabelledChildren:
    """A metric's children by label values, cached: ``labels()`` takes a lock and builds a key
    on every call, which a per-request path can do without."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def get(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class RpcMetrics:
    """``rpc_server_duration_seconds`` of one process; ``for_method`` gives an RPC its recorder."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._duration = Histogram(
            "rpc_server_duration_seconds",
            "Duration of inbound RPCs (OpenTelemetry rpc.server.duration, in seconds); its _count "
            "is the number of calls, by status code.",
            ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def for_method(self, full_method: str) -> MethodRecorder:
        service, _, method = full_method.lstrip("/").partition("/")
        return MethodRecorder(self._duration, service, method)


class MethodRecorder:
    """One RPC's duration histogram, a child per status code built on its first use."""

    __slots__ = ("_by_code", "_duration", "_method", "_service")

    def __init__(self, duration: Histogram, service: str, method: str) -> None:
        self._duration, self._service, self._method = duration, service, method
        self._by_code: dict[grpc.StatusCode, Any] = {}

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._duration.labels(
                "grpc", self._service, self._method, str(code.value[0])
            )
        child.observe(seconds)


@dataclass(frozen=True)
class Refusal:
    """Why a metrics request is refused: API.md's error fields."""

    http_status: int
    status: str
    reason: str
    message: str

    def body(self) -> bytes:
        error = {
            "code": self.http_status,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }
        return json.dumps({"error": error}).encode()


# Headers a proxy adds: a request carrying one did not come straight from a scraper.
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


class MetricsAccess:
    """Who may read metrics: request counts by route or RPC, sign-ins, purchases and generations
    are business figures, so they are not public unless a deployment says so.

    - a bearer token (``STYLESTUDIO_METRICS_BEARER_TOKEN``): ``Authorization: Bearer <token>``,
      compared in constant time; otherwise 401;
    - client networks (``STYLESTUDIO_METRICS_ALLOW_NETWORKS``, CIDRs): the TCP peer must be in
      one, and the request must not have come through a proxy (whose own address would be the
      peer); else 403;
    - both set: both must hold; neither: open in development, 403 in production.
    """

    def __init__(self, token: str, networks: Sequence[IPv4Network | IPv6Network], production: bool) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._networks = tuple(networks)
        self._production = production

    @classmethod
    def from_settings(cls, settings: Any) -> MetricsAccess:
        """From a process's settings (kit.settings.PlatformSettings)."""
        return cls(
            settings.metrics_bearer_token.get_secret_value(),
            settings.metrics_allow_networks,
            settings.is_production,
        )

    def refusal(self, peer: str | None, headers: Mapping[str, str]) -> Refusal | None:
        """None if this request may read the metrics, else why not (``headers``: lower-case names)."""
        if self._expected is None and not self._networks:
            if self._production:
                return _forbidden(
                    "/metrics is not public in production: set STYLESTUDIO_METRICS_BEARER_TOKEN "
                    "or STYLESTUDIO_METRICS_ALLOW_NETWORKS"
                )
            return None
        if self._networks and not (self._peer_allowed(peer) and not any(h in headers for h in PROXY_HEADERS)):
            return _forbidden("/metrics is not served to this address")
        if self._expected is not None:
            given = headers.get("authorization", "").encode("latin-1", errors="replace")
            if not hmac.compare_digest(given, self._expected):
                return Refusal(401, "UNAUTHENTICATED", Reason.UNAUTHORIZED, "/metrics needs its bearer token")
        return None

    def _peer_allowed(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def _forbidden(message: str) -> Refusal:
    return Refusal(403, "PERMISSION_DENIED", Reason.FORBIDDEN, message)


Sampler = Callable[[], Awaitable[None]]


class ServiceMetrics:
    """A service process's registry: the process collector, RPC metrics, and the samplers that
    read figures costing a query (registered by the kit and by the service's own code)."""

    def __init__(self, refresh_seconds: float = 5.0) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(
            registry=self.registry
        )  # process_cpu_seconds_total, process_resident_memory_bytes ...
        self.rpc = RpcMetrics(self.registry)
        self._samplers: list[Sampler] = []
        self._refresh = refresh_seconds
        self._sampled_at = -float("inf")
        self._sampling = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def register(self, *collectors: Any) -> None:
        """Add instruments (e.g. a service's module-level counters) to this process's registry."""
        for collector in collectors:
            self.registry.register(collector)

    def sample(self, *samplers: Sampler) -> None:
        """Run ``samplers`` (they set gauges) before a scrape answers, at most once per refresh."""
        self._samplers.extend(samplers)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def refresh(self) -> None:
        """Every sampler once; one that fails leaves its gauges as they were."""
        outcomes = await asyncio.gather(*(sampler() for sampler in self._samplers), return_exceptions=True)
        for sampler, outcome in zip(self._samplers, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning(
                    "metrics sampler failed",
                    extra={
                        "sampler": getattr(sampler, "__qualname__", repr(sampler)),
                        "error": type(outcome).__name__,
                    },
                )

    def refresh_from_thread(self) -> None:
        """Called by the endpoint's thread before it renders: the samplers run on the service's loop."""
        loop = self._loop
        if loop is None or not self._samplers or loop.is_closed():
            return
        with self._sampling:  # concurrent scrapes share one refresh
            if time.monotonic() - self._sampled_at < self._refresh:
                return
            future = asyncio.run_coroutine_threadsafe(self.refresh(), loop)
            try:
                future.result(SAMPLE_TIMEOUT_SECONDS)
            except Exception:  # a busy loop or a slow dependency: answer with the previous figures
                future.cancel()
                log.warning("metrics samplers did not finish in time")
            self._sampled_at = time.monotonic()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _IPv6Server(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line every few seconds per scraper says nothing."""


class MetricsEndpoint:
    """``GET /metrics`` on ``address`` (``host:port``; port 0: any free one), in a daemon thread."""

    def __init__(self, metrics: ServiceMetrics, access: MetricsAccess, address: str) -> None:
        self._metrics, self._access = metrics, access
        self._exposition = make_wsgi_app(metrics.registry)
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        server_class = _IPv6Server if ":" in host else _ThreadingServer
        self._server = make_server(host, int(port), self._app, server_class, _QuietHandler)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            return _answer(start_response, Refusal(404, "NOT_FOUND", Reason.NOT_FOUND, "No such route"))
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            not_allowed = Refusal(405, "UNIMPLEMENTED", Reason.VALIDATION_ERROR, "Method not allowed")
            return _answer(start_response, not_allowed, [("Allow", "GET, HEAD")])
        headers = {
            key[5:].lower().replace("_", "-"): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        refusal = self._access.refusal(environ.get("REMOTE_ADDR"), headers)
        if refusal is not None:
            return _answer(start_response, refusal)
        self._metrics.refresh_from_thread()
        return self._exposition(environ, start_response)  # type: ignore[no-any-return]


def _answer(
    start_response: Callable[..., Any], refusal: Refusal, extra: Sequence[tuple[str, str]] = ()
) -> list[bytes]:
    body = refusal.body()
    status = f"{refusal.http_status} {_REASON_PHRASES.get(refusal.http_status, 'Error')}"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra])
    return [body]


_REASON_PHRASES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
