"""OpenTelemetry set-up and the platform's telemetry names.

One generation is one trace: gRPC calls carry W3C ``traceparent`` in metadata (the
OTel gRPC interceptors) and every event/job carries it inside its envelope
(``inject_trace_context`` / ``extract_trace_context``), so consumers continue the
trace of the RPC that wrote the event.

W3C ``baggage`` travels the same way (metadata, then the envelope's ``baggage``): the
platform reads one entry, ``stylestudio.synthetic=true``, that marks load-test traffic
(``is_synthetic``) so analytics can tell it apart. The gateway forwards only that entry.
Attribute names live here, under the project's own prefix, and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Status, StatusCode

from kit.logs import describe_error, scrubbed_traceback
from kit.sampling import KeptTraces, RecordEverything, head_sampler
from kit.settings import PlatformSettings
from kit.spanstore import SpanStore

# Span attribute names (the platform's registry; never put emails, tokens or keys in spans).
ATTR_SERVICE = "stylestudio.service"
ATTR_USER_ID = "stylestudio.user.id"
# The service identity that made the call (with ATTR_USER_ID: the service acting for that user).
ATTR_CALLER_SERVICE = "stylestudio.caller.service"
ATTR_REQUEST_ID = "stylestudio.request.id"
ATTR_EVENT_ID = "stylestudio.event.id"
ATTR_EVENT_TYPE = "stylestudio.event.type"
ATTR_GENERATION_ID = "stylestudio.generation.id"
ATTR_GENERATION_STATUS = "stylestudio.generation.status"
ATTR_MODEL = "stylestudio.generation.model"
ATTR_HOLD_ID = "stylestudio.billing.hold.id"
ATTR_FILE_ID = "stylestudio.file.id"
# RPC semantic conventions, on the kit's own client and server spans (kit.clients, kit.interceptors).
ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_SERVICE = "rpc.service"
ATTR_RPC_METHOD = "rpc.method"
ATTR_RPC_STATUS_CODE = "rpc.grpc.status_code"
# Messaging semantic conventions for queue hops.
ATTR_MESSAGING_SYSTEM = "messaging.system"
ATTR_MESSAGING_DESTINATION = "messaging.destination.name"
ATTR_MESSAGING_OPERATION = "messaging.operation.type"
ATTR_MESSAGING_CONSUMER_GROUP = "messaging.consumer.group.name"
ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id"

# The baggage entry that marks synthetic (load-test) traffic, and its one true value.
SYNTHETIC_BAGGAGE_KEY = "stylestudio.synthetic"
SYNTHETIC_BAGGAGE = f"{SYNTHETIC_BAGGAGE_KEY}=true"
BAGGAGE_HEADER = "baggage"
_baggage_propagator = W3CBaggagePropagator()
# The W3C limit of a baggage header; a longer value is read this far only.
_BAGGAGE_SCAN_CHARS = 8192


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON object per line (tests, local debugging)."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        # Kept open: one append per export, whole lines, so readers never see half a span.
        self._out = Path(path).open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        text = "".join(json.dumps(span_as_dict(span)) + "\n" for span in spans)
        with self._lock:
            self._out.write(text)
            self._out.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._out.close()


def span_as_dict(span: ReadableSpan) -> dict[str, object]:
    """A finished span as the trace file and the span store keep it (one JSON object)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "service": span.resource.attributes.get("service.name"),
        "trace_id": format(ctx.trace_id, "032x") if ctx else "",
        "span_id": format(ctx.span_id, "016x") if ctx else "",
        "parent_span_id": format(parent.span_id, "016x") if parent else "",
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_message": span.status.description or "",
        "attributes": _plain_attributes(span.attributes),
        "links": [
            {
                "trace_id": format(link.context.trace_id, "032x"),
                "span_id": format(link.context.span_id, "016x"),
                "attributes": _plain_attributes(link.attributes),
            }
            for link in span.links
        ],
        "events": [
            {
                "name": event.name,
                "time_ns": event.timestamp,
                "attributes": _plain_attributes(event.attributes),
            }
            for event in span.events
        ],
    }


def _plain_attributes(attributes: Mapping[str, object] | None) -> dict[str, object]:
    if not attributes:
        return {}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in attributes.items()}


_provider: TracerProvider | None = None
_OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def setup_telemetry(service_name: str, settings: PlatformSettings) -> TracerProvider:
    """Install the process-wide tracer provider for ``service_name`` (once per process): spans go
    to the local span store, over OTLP and to the trace file, each when configured."""
    global _provider
    if _provider is not None:
        return _provider
    store = span_store(settings, service_name)
    sampler = head_sampler(settings.trace_sample_ratio, production=settings.is_production)
    provider = TracerProvider(
        resource=service_resource(service_name),
        sampler=RecordEverything(sampler) if store is not None else sampler,
    )
    exporter = otlp_exporter(settings)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if settings.trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(settings.trace_file)))
    if store is not None:
        provider.add_span_processor(KeptTraces(store, settings.trace_keep_slower_than_seconds, span_as_dict))
    trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def service_resource(service_name: str) -> Resource:
    """The process's resource: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` apply, with
    ``stylestudio-<service>`` as the service name when neither names one."""
    given = OTELResourceDetector().detect().attributes
    attributes: dict[str, str] = {ATTR_SERVICE: service_name}
    defaults = {
        "service.name": f"stylestudio-{service_name}",
        "service.namespace": "stylestudio",
        "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
    }
    attributes |= {key: value for key, value in defaults.items() if not given.get(key)}
    return Resource.create(attributes)


def span_store(settings: PlatformSettings, service_name: str) -> SpanStore | None:
    if not settings.span_store_dir:
        return None
    return SpanStore(
        Path(settings.span_store_dir),
        max_bytes=settings.span_store_max_bytes,
        retention_seconds=settings.span_store_retention_hours * 3600,
        writer=service_name,
    )


def otlp_exporter(settings: PlatformSettings) -> SpanExporter | None:
    """OTLP/gRPC to the platform's endpoint if set, else to the standard variables' if set."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if not (endpoint or any(os.environ.get(name) for name in _OTLP_ENDPOINT_VARIABLES)):
        return None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    if not endpoint:  # the exporter reads OTEL_EXPORTER_OTLP_* itself
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.lower().startswith("https://"))


def shutdown_telemetry() -> None:
    if _provider is not None:
        _provider.force_flush(timeout_millis=2000)
        _provider.shutdown()


def tracer(name: str = "stylestudio") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_trace_context() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``, ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_trace_context(traceparent: str, tracestate: str = "", baggage: str = "") -> otel_context.Context:
    """The context of W3C ``traceparent``/``tracestate`` and ``baggage`` values (each may be empty)."""
    carrier = {"traceparent": traceparent} if traceparent else {}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = propagate.extract(carrier)
    if baggage:
        context = _baggage_propagator.extract({BAGGAGE_HEADER: baggage}, context)
    return context


@contextlib.contextmanager
def attached(context: otel_context.Context) -> Iterator[None]:
    """``context`` (a trace parent, its baggage) is the current one inside the block."""
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def current_baggage() -> str:
    """The current context's W3C baggage as a header value ("" without any)."""
    carrier: dict[str, str] = {}
    _baggage_propagator.inject(carrier)
    return carrier.get(BAGGAGE_HEADER, "")


def is_synthetic(context: otel_context.Context | None = None) -> bool:
    """Whether the operation (the current context by default) is marked as synthetic traffic."""
    return otel_baggage.get_baggage(SYNTHETIC_BAGGAGE_KEY, context) == "true"


def baggage_is_synthetic(header: str) -> bool:
    """Whether a W3C ``baggage`` header value carries ``stylestudio.synthetic=true``.

    Read without the OTel propagator, which logs a warning per malformed entry: the value may
    come from anyone on the internet (the gateway), so it is only scanned, never logged.
    """
    for member in header[:_BAGGAGE_SCAN_CHARS].split(","):
        key, _, value = member.partition("=")
        if key.strip() == SYNTHETIC_BAGGAGE_KEY and value.partition(";")[0].strip() == "true":
            return True
    return False


def rpc_attributes(full_method: str) -> dict[str, str]:
    """``/package.Service/Method`` -> the rpc.* attributes of its spans."""
    service, _, method = full_method.lstrip("/").partition("/")
    return {ATTR_RPC_SYSTEM: "grpc", ATTR_RPC_SERVICE: service, ATTR_RPC_METHOD: method}


# Server-side codes that mean the server failed (OTel's RPC conventions); the others are the
# caller's doing (NOT_FOUND, INVALID_ARGUMENT, ...) and leave a server span unset.
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def end_rpc_span(span: trace.Span, code: grpc.StatusCode, *, server: bool) -> None:
    """Record the call's status code on its span and end it (a client sees any non-OK as an error)."""
    span.set_attribute(ATTR_RPC_STATUS_CODE, code.value[0])
    if code is not grpc.StatusCode.OK and (not server or code in _SERVER_ERROR_CODES):
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


def record_error(span: trace.Span, error: BaseException) -> None:
    """``span.record_exception``, scrubbed as log lines are (kit.logs.describe_error): the
    error's class and a short message, never an SQL statement or its parameters."""
    span.record_exception(
        error,
        attributes={
            "exception.message": describe_error(error),
            "exception.stacktrace": scrubbed_traceback(error),
        },
    )


@contextlib.contextmanager
def scrubbed_span(
    tracer_: trace.Tracer,
    name: str,
    *,
    context: otel_context.Context | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[trace.Span]:
    """``tracer_.start_as_current_span``, except that an error leaving the block is recorded as
    ``record_error`` does: the SDK's own recording keeps ``str(error)`` and the whole traceback,
    where a database error carries its SQL statement and parameters."""
    with tracer_.start_as_current_span(
        name,
        context=context,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as error:
            record_error(span, error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


def traceparent_of(span: trace.Span) -> list[tuple[str, str]]:
    """W3C trace context headers naming ``span`` as the parent, as propagate.inject writes them."""
    context = span.get_span_context()
    if not context.is_valid:
        return []
    parent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    headers = [("traceparent", parent)]
    if context.trace_state:
        headers.append(("tracestate", context.trace_state.to_header()))
    return headers


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
