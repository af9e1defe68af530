"""The gateway's ASGI application: REST+JSON in front of the services' gRPC APIs.

A raw ASGI app rather than a framework: the route table is precompiled from the
descriptors, and a request goes from the socket to its gRPC call with no per-request
routing objects or middleware stack. Every response carries X-Request-Id and
X-Trace-Id; every request is counted and timed by route template and status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
import orjson
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.api import Api, ApiRoute, CallKind
from gateway.channels import Backends
from gateway.client_address import client_address, parse_networks
from gateway.dashboard import Dashboard
from gateway.descriptors import ApiDescriptors
from gateway.docs import docs_assets
from gateway.errors import (
    ApiError,
    bad_request,
    bearer_challenge,
    busy,
    from_rpc_error,
    headers_too_large,
    internal_error,
    method_not_allowed,
    not_found,
    service_headers,
    unauthenticated,
)
from gateway.exchange import ClientDisconnected, Exchange, Headers, Receive, Scope, Send
from gateway.metrics import UNMATCHED, GatewayMetrics, api_error
from gateway.openapi import build_openapi
from gateway.operator import AdminCheck, operator_assets
from gateway.readiness import Readiness
from gateway.routes import PathParams, RouteTable, parse_template
from gateway.settings import GatewaySettings
from gateway.streaming import (
    DOWNLOAD_HEADERS,
    StreamBroken,
    etag_matches,
    send_upload,
    serve_download,
    serve_event_stream,
    served_type,
)
from gateway.traces import TRACE_ROUTE, AdminTraces, span_store_lookup
from kit import telemetry
from kit.auth import ServiceCredentials
from kit.errors import service_of
from kit.interceptors import IDEMPOTENCY_KEY_HEADER, REQUEST_ID_HEADER
from kit.metrics import MetricsAccess
from kit.origin import CLIENT_ADDRESS_HEADER, CLIENT_USER_AGENT_HEADER, RELAY_CREDENTIAL_HEADER
from kit.process_metrics import sample_loop_lag
from kit.ratelimits import RATE_LIMIT_HEADERS
from kit.service_keys import GATEWAY_IDENTITY
from kit.settings import refuse_insecure_settings
from kit.tls import TransportSecurity

log = logging.getLogger("stylestudio.gateway")

# Headers of the contract that reach the services as gRPC metadata of the same name.
FORWARDED_HEADERS = (
    IDEMPOTENCY_KEY_HEADER,
    "stripe-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
)
_READ_HEADERS = frozenset(
    name.encode()
    for name in (
        *FORWARDED_HEADERS,
        "authorization",
        REQUEST_ID_HEADER,
        "content-type",
        "content-length",
        "origin",
        "traceparent",
        "tracestate",
        telemetry.BAGGAGE_HEADER,
        "user-agent",
        "x-forwarded-for",
        "forwarded",
        "access-control-request-method",
        "access-control-request-headers",
        "if-none-match",
    )
)
_FORWARDED_FOR = b"x-forwarded-for"  # the HTTP header proxies append to
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +[A-Za-z0-9\-._~+/]+=*")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]{0,8192}")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
# What HTTP/2's header table counts per entry besides the name and value (gRPC's limits count it).
_METADATA_ENTRY_OVERHEAD = 32
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_EXPOSED = ", ".join(
    ("x-request-id", "x-trace-id", "retry-after", "etag", "www-authenticate", *RATE_LIMIT_HEADERS)
).encode()
_ALLOWED_REQUEST_HEADERS = b"authorization, content-type, idempotency-key, x-request-id"

Handler = Callable[[Exchange, list[tuple[str, str]]], Awaitable[None]]
# A route of the gateway's own with path variables (GET /v1/admin/traces/{id}).
OwnHandler = Callable[[Exchange, list[tuple[str, str]], PathParams], Awaitable[None]]


class Gateway:
    """The ASGI app. Built from descriptors and a map of gRPC service -> target address."""

    def __init__(
        self,
        settings: GatewaySettings,
        descriptors: ApiDescriptors | None = None,
        targets: Mapping[str, str] | None = None,
        health_targets: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self._trusted_proxies = parse_networks(settings.gateway_trusted_proxies)
        # The gateway's own identity: its credential on every call proves the call came through
        # it, so services believe the client origin it forwards (kit.origin). It verifies nothing.
        self.credentials = ServiceCredentials.from_settings(settings, GATEWAY_IDENTITY, verifies=False)
        descriptors = descriptors or ApiDescriptors.from_file(settings.descriptor_set)
        self.api = Api(descriptors)
        if targets is None:
            targets = {s: t for s in self.api.services if (t := settings.target_of(s)) is not None}
        missing = [service for service in self.api.services if service not in targets]
        if missing:
            raise ValueError(f"no gRPC target configured for {', '.join(missing)}")
        self.backends = Backends(
            targets, TransportSecurity.from_settings(settings), settings.grpc_keepalive_ms
        )
        self.health_targets = dict(health_targets or _health_targets(targets))
        self.readiness: Readiness | None = None
        self._loop_lag: asyncio.Task[None] | None = None
        self.dashboard = Dashboard(
            descriptors,
            settings.dashboard_recent_items,
            settings.rpc_deadline_seconds,
            settings.default_retry_after_seconds,
        )
        self.metrics = GatewayMetrics()
        self.in_flight = 0  # API requests being served (admission control, _serve_route)
        self.metrics_access = MetricsAccess.from_settings(settings)
        self.tracer = trace.get_tracer("stylestudio.gateway")
        self._fixed: dict[str, Handler] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/openapi.json": self._openapi,
        }
        if self.dashboard.available:
            self._fixed["/v1/dashboard"] = self._dashboard
        for path, (content_type, body) in docs_assets().items():
            self._fixed[path] = _static(content_type, body)
        # The operator page and the admin routes it reads that no proto declares (gateway/operator.py).
        self.admin_check = AdminCheck(
            descriptors, settings.rpc_deadline_seconds, settings.default_retry_after_seconds
        )
        self.traces = AdminTraces(span_store_lookup(settings.span_store_dir))
        self._own: RouteTable[OwnHandler] = RouteTable()
        if self.admin_check.available:
            self._own.add("GET", parse_template(TRACE_ROUTE), self._trace)
            for path, (content_type, body, headers) in operator_assets().items():
                self._fixed[path] = _static(content_type, body, headers)
        openapi = build_openapi(
            self.api, "Style Studio API", "v1", self.dashboard.available, self.admin_check.available
        )
        self.openapi_json = orjson.dumps(openapi)
        self._cors_any = "*" in settings.cors_allow_origins
        self._cors_origins = frozenset(settings.cors_allow_origins)

    # --- ASGI ---------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def start(self) -> None:
        """Opens the channels; they belong to the serving event loop, so not at import."""
        self.backends.open()
        for route in self.api.routes:
            route.call = self.backends.callable_for(route.method)
        self.dashboard.bind(
            {name: self.backends.callable_for(m) for name, m in self.dashboard.methods().items()}
        )
        if self.admin_check.method is not None:
            self.admin_check.bind(self.backends.callable_for(self.admin_check.method))
        self.readiness = Readiness(
            {name: self.backends.channel_to(target) for name, target in self.health_targets.items()},
            self.settings.readiness_timeout_seconds,
        )
        self._loop_lag = asyncio.create_task(sample_loop_lag(self.metrics.loop_lag), name="loop-lag")

    async def close(self) -> None:
        if self._loop_lag is not None:
            self._loop_lag.cancel()
        await self.backends.close()  # the readiness checks share these channels

    # --- one request ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in _READ_HEADERS}
        given_id = headers.get(REQUEST_ID_HEADER)
        request_id = given_id if given_id and _REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        verb = scope["method"]
        match = None if path in self._fixed else self.api.table.match(verb, path)
        own = None if match is not None or path in self._fixed else self._own.match(verb, path)
        if match is not None:
            label = match.target.label
        elif own is not None:
            label = own.template.template
        else:
            label = path if path in self._fixed else UNMATCHED
        parent = propagate.extract(headers) if "traceparent" in headers else None
        attributes = {"http.request.method": verb, "http.route": label, telemetry.ATTR_REQUEST_ID: request_id}
        span = self.tracer.start_span(f"{verb} {label}", parent, SpanKind.SERVER, attributes)
        context = span.get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        common: Headers = [(b"x-request-id", request_id.encode()), (b"x-trace-id", trace_id.encode())]
        origin = headers.get("origin")
        if origin is not None and (self._cors_any or origin in self._cors_origins):
            common += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", _EXPOSED),
                (b"vary", b"Origin"),
            ]
        exchange = Exchange(scope, receive, send, headers, request_id, common)
        metadata = [
            (REQUEST_ID_HEADER, request_id),
            (RELAY_CREDENTIAL_HEADER, self.credentials.token()),
            *telemetry.traceparent_of(span),
        ]
        # Of a client's baggage only the synthetic mark goes on (load tests; docs/analytics.md).
        if telemetry.baggage_is_synthetic(headers.get(telemetry.BAGGAGE_HEADER, "")):
            metadata.append((telemetry.BAGGAGE_HEADER, telemetry.SYNTHETIC_BAGGAGE))
        try:
            oversized = self._oversized_headers(scope["headers"])
            if oversized is not None:
                raise oversized
            if verb == "OPTIONS" and "access-control-request-method" in headers and origin is not None:
                await self._preflight(exchange, path)
            elif match is not None:
                await self._serve_route(exchange, match.target, match.params, metadata)
            elif own is not None:
                await own.target(exchange, metadata, own.params)
            elif path in self._fixed:
                if verb != "GET":
                    raise method_not_allowed(["GET"])
                await self._fixed[path](exchange, metadata)
            else:
                allowed = self.api.table.allowed_methods(path) or self._own.allowed_methods(path)
                raise method_not_allowed(allowed) if allowed else not_found()
        except ApiError as error:
            await self._fail(exchange, error)
        except ClientDisconnected:
            exchange.status = 499
        except StreamBroken:
            raise  # the response has started: dropping the connection is all that is left
        except Exception:
            log.exception("request failed", extra={"route": label, "request_id": request_id})
            span.set_status(Status(StatusCode.ERROR))
            if exchange.started:
                raise
            await exchange.fail(internal_error())
        finally:
            status = exchange.status or 500
            span.set_attribute("http.response.status_code", status)
            span.end()
            method_label = verb if verb in _HTTP_METHODS else "OTHER"
            self.metrics.observe(method_label, label, status, time.perf_counter() - started)

    async def _fail(self, exchange: Exchange, error: ApiError) -> None:
        if exchange.started:
            return
        extra = [(b"allow", error.details["allow"].encode())] if error.http_status == 405 else None
        await exchange.fail(error, extra)

    async def _serve_route(
        self, exchange: Exchange, route: ApiRoute, params: Any, metadata: list[tuple[str, str]]
    ) -> None:
        streams = route.kind is CallKind.EVENTS or route.kind is CallKind.DOWNLOAD
        # A refusal of a method with rate-limit headers must carry the caller's allowance, which
        # only its service knows: that service's own admission control refuses it (kit/ratelimits.py).
        with self._admitted(holds=not streams, refuses=not route.method.rate_limit_headers):
            await self._call_route(exchange, route, params, metadata)

    @contextlib.contextmanager
    def _admitted(self, *, holds: bool, refuses: bool = True) -> Iterator[None]:
        """Admission control: refuse at once past the cap; a stream is checked but holds no place
        while it streams (it mostly waits); a request that ``refuses`` nothing here still counts."""
        limit = self.settings.gateway_max_in_flight_requests
        if refuses and limit and self.in_flight >= limit:
            raise busy(self.settings.gateway_busy_retry_after_seconds)
        if not holds:
            yield
            return
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _call_route(
        self, exchange: Exchange, route: ApiRoute, params: Any, metadata: list[tuple[str, str]]
    ) -> None:
        self._add_credentials(exchange, metadata, required=not route.method.is_public)
        for name in FORWARDED_HEADERS:
            value = exchange.headers.get(name)
            if value is not None:
                if not _METADATA_VALUE.fullmatch(value):
                    raise bad_request(f"Header {name!r} must be printable ASCII", name)
                metadata.append((name, value.strip()))
        self._add_client_origin(exchange, metadata)
        settings = self.settings
        if sum(len(key) + len(value) + _METADATA_ENTRY_OVERHEAD for key, value in metadata) > (
            settings.max_metadata_bytes
        ):
            raise headers_too_large(
                "The request's headers are too large to pass on", {"limit": str(settings.max_metadata_bytes)}
            )
        kind = route.kind
        if kind is CallKind.UPLOAD:
            await self._upload(exchange, route, params, metadata)
            return
        body = await exchange.read_body(settings.max_body_bytes) if route.mapping.has_body else b""
        content_type = exchange.headers.get("content-type", "")
        request = route.mapping.build(params, exchange.query, body, content_type)
        payload = _serialize(request)
        service = service_of(route.method.service)
        if kind is CallKind.UNARY or kind is CallKind.RAW_RESPONSE:
            unary = route.call(payload, metadata=metadata, timeout=settings.rpc_deadline_seconds)
            try:
                response = await unary
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error, settings.default_retry_after_seconds, service) from error
            if kind is CallKind.UNARY and route.is_catalogue:
                await self._respond_cacheable(exchange, route.mapping.encode_response(response))
            elif kind is CallKind.UNARY:
                headers = service_headers(await unary.initial_metadata())
                await exchange.respond(200, route.mapping.encode_response(response), headers=headers)
            else:
                raw_type = served_type(response.content_type, route.media_types).encode()
                await exchange.respond(200, response.data, raw_type, DOWNLOAD_HEADERS)
            return
        call = route.call(payload, metadata=metadata, timeout=settings.stream_deadline_seconds)
        if kind is CallKind.DOWNLOAD:
            if_none_match = exchange.headers.get("if-none-match", "")
            retry_after = settings.default_retry_after_seconds
            await serve_download(exchange, call, retry_after, service, if_none_match, route.media_types)
        else:
            retry_after, heartbeat = settings.default_retry_after_seconds, settings.sse_heartbeat_seconds
            await serve_event_stream(
                exchange, call, route.mapping.encode_response, retry_after, heartbeat, service
            )

    async def _respond_cacheable(self, exchange: Exchange, body: bytes) -> None:
        """A catalogue's answer, with its validator: 304 when the client's copy is current."""
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = [
            (b"cache-control", f"public, max-age={self.settings.catalogue_cache_max_age_seconds}".encode()),
            (b"etag", etag.encode()),
        ]
        if_none_match = exchange.headers.get("if-none-match", "")
        if if_none_match and etag_matches(if_none_match, etag):
            await exchange.not_modified(headers)
        else:
            await exchange.respond(200, body, headers=headers)

    async def _upload(
        self, exchange: Exchange, route: ApiRoute, params: Any, metadata: list[tuple[str, str]]
    ) -> None:
        assert route.upload is not None
        settings = self.settings
        bound = route.mapping.build(params, b"", b"", "")  # the path variables, if the route has any
        call = route.call(metadata=metadata, timeout=settings.stream_deadline_seconds)
        try:
            limit, chunk = settings.max_upload_bytes, settings.upload_chunk_bytes
            await send_upload(exchange, call, route.upload, bound, limit, chunk)
        except (ApiError, ClientDisconnected):
            call.cancel()
            raise
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the service ended the call early; its status is what the client gets, below
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            service = service_of(route.method.service)
            raise from_rpc_error(error, settings.default_retry_after_seconds, service) from error
        await exchange.respond(200, route.mapping.encode_response(response))

    def _oversized_headers(self, raw: Headers) -> ApiError | None:
        """431 for headers past the limits (settings), found before anything reads them."""
        total, value_limit = 0, self.settings.max_header_value_bytes
        for name, value in raw:
            total += len(name) + len(value)
            if len(value) > value_limit and name in _READ_HEADERS:
                header = name.decode("latin-1")
                return headers_too_large(
                    f"The {header} header is over {value_limit} bytes",
                    {"field": header, "limit": str(value_limit)},
                )
        if total > self.settings.max_header_bytes:
            limit = str(self.settings.max_header_bytes)
            return headers_too_large(f"The request headers are over {limit} bytes", {"limit": limit})
        return None

    def _add_client_origin(self, exchange: Exchange, metadata: list[tuple[str, str]]) -> None:
        """Who is behind the call, for sessions, limits and the usage log (kit.origin): exactly
        one address, the peer's or, behind trusted proxies (STYLESTUDIO_GATEWAY_TRUSTED_PROXIES),
        the right-most X-Forwarded-For hop that is not one of them (gateway/client_address.py)."""
        client = exchange.scope.get("client")
        forwarded = (
            [value.decode("latin-1") for name, value in exchange.scope["headers"] if name == _FORWARDED_FOR]
            if self._trusted_proxies
            else []
        )
        address = client_address(str(client[0]) if client else None, forwarded, self._trusted_proxies)
        if address is not None:
            metadata.append((CLIENT_ADDRESS_HEADER, address))
        agent = exchange.headers.get("user-agent", "")
        if agent and _METADATA_VALUE.fullmatch(agent):
            metadata.append((CLIENT_USER_AGENT_HEADER, agent[:512]))

    def _add_credentials(self, exchange: Exchange, metadata: list[tuple[str, str]], required: bool) -> None:
        """Forwards ``Authorization``; for non-PUBLIC routes, refuses a missing or malformed one."""
        header = exchange.headers.get("authorization")
        if header is not None and _BEARER.fullmatch(header):
            metadata.append(("authorization", header))
        elif required:
            raise unauthenticated(
                "Missing Authorization header"
                if header is None
                else "Malformed Authorization header; expected 'Bearer <token>'"
            )

    async def _preflight(self, exchange: Exchange, path: str) -> None:
        allowed = (
            self.api.table.allowed_methods(path)
            or self._own.allowed_methods(path)
            or (["GET"] if path in self._fixed else [])
        )
        if not allowed:
            raise not_found()
        requested = exchange.headers.get("access-control-request-headers", "")
        headers = [
            (b"access-control-allow-methods", ", ".join(allowed).encode()),
            (b"access-control-allow-headers", requested.encode("latin-1") or _ALLOWED_REQUEST_HEADERS),
            (b"access-control-max-age", str(self.settings.cors_max_age_seconds).encode()),
        ]
        await exchange.respond(204, b"", b"text/plain", headers)

    # --- the routes not derived from the protos --------------------------------------------------

    async def _healthz(self, exchange: Exchange, _: list[tuple[str, str]]) -> None:
        await exchange.respond(200, b'{"status":"ok"}')

    async def _readyz(self, exchange: Exchange, _: list[tuple[str, str]]) -> None:
        assert self.readiness is not None
        services = await self.readiness.check()
        ready = all(status == "SERVING" for status in services.values())
        await exchange.respond(200 if ready else 503, orjson.dumps({"ready": ready, "services": services}))

    async def _metrics(self, exchange: Exchange, _: list[tuple[str, str]]) -> None:
        client = exchange.scope.get("client")
        refusal = self.metrics_access.refusal(str(client[0]) if client else None, exchange.headers)
        if refusal is not None:
            raise api_error(refusal)
        await exchange.respond(200, self.metrics.render(), self.metrics.content_type)

    async def _openapi(self, exchange: Exchange, _: list[tuple[str, str]]) -> None:
        await exchange.respond(200, self.openapi_json)

    async def _dashboard(self, exchange: Exchange, metadata: list[tuple[str, str]]) -> None:
        self._add_credentials(exchange, metadata, required=True)
        with self._admitted(holds=True):  # calls several services: an API request like the others
            status, body = await self.dashboard.render(metadata)
        challenge = [bearer_challenge("authorization" in exchange.headers)] if status == 401 else None
        await exchange.respond(status, body, headers=challenge)

    async def _trace(self, exchange: Exchange, metadata: list[tuple[str, str]], params: PathParams) -> None:
        self._add_credentials(exchange, metadata, required=True)
        with self._admitted(holds=True):
            await self.admin_check.require_admin(exchange.headers.get("authorization"), metadata)
            body = await self.traces.document(params[0][1])
        await exchange.respond(200, body)


def _serialize(request: Any) -> bytes:
    try:
        return bytes(request.SerializeToString())
    except Exception as error:  # e.g. a string the client sent that protobuf cannot encode
        raise bad_request(f"The request cannot be encoded: {error}") from error


def _static(content_type: bytes, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> Handler:
    response_headers = [(b"cache-control", b"public, max-age=3600"), *headers]

    async def serve(exchange: Exchange, _: list[tuple[str, str]]) -> None:
        await exchange.respond(200, body, content_type, response_headers)

    return serve


def _health_targets(targets: Mapping[str, str]) -> dict[str, str]:
    """One health check per backend, named by its service (``billing``) or its gRPC service."""
    names: dict[str, str] = {}
    for service, target in sorted(targets.items()):
        parts = service.split(".")
        name = parts[1] if len(parts) > 2 and parts[0] == "stylestudio" else service
        names.setdefault(name, target)
    return names


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    settings = settings or GatewaySettings()
    # In production, InsecureSettings: a weak or missing secret stops the gateway here.
    refuse_insecure_settings(settings, log)
    telemetry.setup_telemetry("gateway", settings)
    return Gateway(settings)
