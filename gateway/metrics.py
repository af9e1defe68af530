"""Prometheus metrics of the gateway: requests by route template and status, latency, the
process's own CPU and memory, and its event loop's lag (the services' metric,
kit.process_metrics). Who may read them is the kit's rule (kit.metrics.MetricsAccess), the
same as on every service's metrics port.

Labels are route templates (``/v1/files/{id}``), never raw paths, so a scan of random
URLs cannot grow the series without bound. Label children are cached (kit.metrics.LabelledChildren).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import ApiError
from kit.metrics import LATENCY_BUCKETS, LabelledChildren, Refusal
from kit.process_metrics import loop_lag_histogram

UNMATCHED = "unmatched"


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST.encode()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._requests = LabelledChildren(
            Counter(
                "stylestudio_gateway_requests",
                "HTTP requests answered by the gateway, by method, route template and status.",
                ["method", "route", "status"],
                registry=self.registry,
            )
        )
        self._latency = LabelledChildren(
            Histogram(
                "stylestudio_gateway_request_duration_seconds",
                "Time from request to the end of the response, by method and route template.",
                ["method", "route"],
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            )
        )

        # sampled by the serving loop once it runs (Gateway.start)
        self.loop_lag = loop_lag_histogram(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.get(method, route, str(status)).inc()
        self._latency.get(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def api_error(refusal: Refusal) -> ApiError:
    """The gateway's error for a refused metrics request."""
    return ApiError(refusal.http_status, refusal.status, refusal.reason, refusal.message)
