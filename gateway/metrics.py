"""Prometheus metrics of the gateway: requests by route template and status, and latency,
and who may read them (``MetricsAccess``).

Labels are route templates (``/v1/files/{id}``), never raw paths, so a scan of random
URLs cannot grow the series without bound. Label children are cached: ``labels()``
takes a lock and builds a key on every call, which the hot path can do without.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.errors import ApiError, forbidden, unauthenticated

UNMATCHED = "unmatched"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST.encode()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "stylestudio_gateway_requests",
            "HTTP requests answered by the gateway, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "stylestudio_gateway_request_duration_seconds",
            "Time from request to the end of the response, by method and route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = self._requests.labels(method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        histogram = self._histograms.get((method, route))
        if histogram is None:
            histogram = self._latency.labels(method, route)
            self._histograms[(method, route)] = histogram
        histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# Headers a proxy adds: a request carrying one did not come straight from a scraper.
PROXY_HEADERS = ("x-forwarded-for", "forwarded")


class MetricsAccess:
    """Who may read /metrics: the request counts by route are business figures (sign-ups,
    purchases, generations), so they are not public unless a deployment says so.

    - a bearer token (``METRICS_BEARER_TOKEN``): ``Authorization: Bearer <token>``, compared in
      constant time; otherwise 401;
    - client networks (``METRICS_ALLOW_NETWORKS``, CIDRs): the TCP peer must be in one, and the
      request must not have come through a proxy (whose own address would be the peer); else 403;
    - both set: both must hold; neither: open in development, 403 in production.
    """

    def __init__(self, token: str, networks: Sequence[IPv4Network | IPv6Network], production: bool) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self._networks = tuple(networks)
        self._production = production

    def refusal(self, peer: str | None, headers: Mapping[str, str]) -> ApiError | None:
        """None if this request may read the metrics, else the error to answer."""
        if self._expected is None and not self._networks:
            if self._production:
                return forbidden(
                    "/metrics is not public in production: set STYLESTUDIO_METRICS_BEARER_TOKEN "
                    "or STYLESTUDIO_METRICS_ALLOW_NETWORKS"
                )
            return None
        if self._networks and not (self._peer_allowed(peer) and not any(h in headers for h in PROXY_HEADERS)):
            return forbidden("/metrics is not served to this address")
        if self._expected is not None:
            given = headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(given, self._expected):
                return unauthenticated("/metrics needs its bearer token")
        return None

    def _peer_allowed(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address(peer or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
