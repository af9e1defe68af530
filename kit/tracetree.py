"""A trace from the span store as an operator reads it: `stylestudio trace <id>`.

The tree shows each span's start offset and duration, its service, name, status and key attributes;
``*`` marks the critical path (the chain of spans the trace's end waited on), ``!`` an error, ``~``
a compensation (a hold released, a refund, results discarded, a saga undone). A queue hop shows the
producer, the queue and the consumer, with the time the message waited; span links show what a
batch span handled, and under a producer the batch consumers (other traces) that linked to it.
``--json`` prints the trace's own spans, each with ``critical`` added.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from kit import telemetry

Span = dict[str, Any]

# What undoes a saga step (docs/generation.md): RPC methods, event types and span names.
COMPENSATION_METHODS = frozenset({"ReleaseHold", "DiscardGenerationResults", "RefundPurchase"})
COMPENSATION_EVENTS = frozenset(
    {"billing.hold_released", "billing.tokens_refunded", "generation.failed", "generation.canceled"}
)
COMPENSATION_SPANS = frozenset({"generation.cancel", "generation.abort_start", "generation.sweep deadline"})

# Attributes worth a place on a span's line, with the short name they are shown under.
KEY_ATTRIBUTES = (
    (telemetry.ATTR_GENERATION_ID, "generation"),
    (telemetry.ATTR_GENERATION_STATUS, "status"),
    (telemetry.ATTR_MODEL, "model"),
    ("stylestudio.generation.attempt", "attempt"),
    ("stylestudio.generation.try", "try"),
    ("stylestudio.generation.error", "error"),
    (telemetry.ATTR_HOLD_ID, "hold"),
    (telemetry.ATTR_FILE_ID, "file"),
    (telemetry.ATTR_USER_ID, "user"),
    (telemetry.ATTR_CALLER_SERVICE, "caller"),
    (telemetry.ATTR_REQUEST_ID, "request"),
    ("http.response.status_code", "http"),
    (telemetry.ATTR_EVENT_TYPE, "event"),
    (telemetry.ATTR_MESSAGING_CONSUMER_GROUP, "group"),
    ("messaging.batch.message_count", "messages"),
)
# gRPC status codes by number (rpc.grpc.status_code), for the ones worth naming.
_GRPC_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
_RED, _YELLOW, _BOLD, _DIM = "31", "33", "1", "2"


@dataclass
class Trace:
    """The spans of one trace, as a tree (children by start), with its critical path."""

    spans: list[Span]
    # Spans of other traces that link into this one (``SpanStore.linking_to``), shown, not counted.
    linked_from: list[Span] = field(default_factory=list)
    by_id: dict[str, Span] = field(init=False)
    children: dict[str, list[Span]] = field(init=False)
    roots: list[Span] = field(init=False)
    critical: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.spans = sorted(self.spans, key=_start)
        self.by_id = {span["span_id"]: span for span in self.spans}
        self.children = {}
        self.roots = []
        for span in self.spans:
            parent = span.get("parent_span_id") or ""
            if parent in self.by_id:
                self.children.setdefault(parent, []).append(span)
            else:  # the root, or a span whose parent was not kept (sampled out, dropped)
                self.roots.append(span)
        self.critical = set()
        for root in self.roots:
            self._mark_critical(root, self._subtree_end(root, {}), {})

    @property
    def trace_id(self) -> str:
        return str(self.spans[0]["trace_id"])

    @property
    def start(self) -> int:
        return _start(self.spans[0])

    @property
    def end(self) -> int:
        return max(_end(span) for span in self.spans)

    def _subtree_end(self, span: Span, memo: dict[str, int]) -> int:
        key = span["span_id"]
        if key not in memo:
            ends = [self._subtree_end(child, memo) for child in self.children.get(key, [])]
            memo[key] = max([_end(span), *ends])
        return memo[key]

    def _mark_critical(self, span: Span, horizon: int, memo: dict[str, int]) -> None:
        """The span is on the path; so is the child that finished last before ``horizon``, then
        the one that finished last before that child started, and so on (Jaeger's definition,
        with a span's descendants counting towards its end, so a queue hop's consumer counts)."""
        self.critical.add(span["span_id"])
        cursor = horizon
        children = self.children.get(span["span_id"], [])
        for child in sorted(children, key=lambda c: self._subtree_end(c, memo), reverse=True):
            child_end = self._subtree_end(child, memo)
            if child_end > cursor or _start(child) >= cursor:
                continue
            self._mark_critical(child, child_end, memo)
            cursor = _start(child)

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "spans": [span | {"critical": span["span_id"] in self.critical} for span in self.spans],
        }


def is_compensation(span: Span) -> bool:
    attributes = span.get("attributes") or {}
    return (
        attributes.get(telemetry.ATTR_RPC_METHOD) in COMPENSATION_METHODS
        or attributes.get(telemetry.ATTR_EVENT_TYPE) in COMPENSATION_EVENTS
        or span.get("name") in COMPENSATION_SPANS
    )


def is_error(span: Span) -> bool:
    return span.get("status") == "ERROR"


def service_of(span: Span) -> str:
    return str(span.get("service") or "?").removeprefix("stylestudio-")


def render(trace: Trace, out: TextIO, *, colour: bool = False) -> None:
    """The trace as an indented tree, one line per span, and under a span one per link, linking
    span or event."""
    services = sorted({service_of(span) for span in trace.spans})
    errors = sum(is_error(span) for span in trace.spans)
    out.write(
        f"trace {trace.trace_id}: {len(trace.spans)} spans, {len(services)} services "
        f"({', '.join(services)}), {_duration(trace.end - trace.start)}"
        + (f", {errors} with errors" if errors else "")
        + "\n"
    )
    out.write(
        "  * critical path   ! error   ~ compensation   (start offset from the trace's start, duration)\n"
    )
    width = max(len(service) for service in services)
    for root in trace.roots:
        _render_span(trace, root, "", True, out, width, colour, top=True)


def _render_span(
    trace: Trace, span: Span, indent: str, last: bool, out: TextIO, width: int, colour: bool, *, top: bool
) -> None:
    critical = span["span_id"] in trace.critical
    error, compensation = is_error(span), is_compensation(span)
    marks = ("*" if critical else " ") + ("!" if error else "~" if compensation else " ")
    branch = "" if top else ("`- " if last else "+- ")
    offset = _duration(_start(span) - trace.start)
    duration = _duration(_end(span) - _start(span))
    text = f"{service_of(span):<{width}}  {indent}{branch}{span['name']}"
    details = _details(span, trace)
    line = f"{marks} {offset:>10} {duration:>10}  {text}" + (f"  {details}" if details else "")
    out.write(_paint(line, _line_colour(critical, error, compensation), colour) + "\n")
    child_indent = indent + ("" if top else ("   " if last else "|  "))
    notes = _notes(span, trace)
    pad = " " * (2 + 1 + 10 + 1 + 10 + 2 + width + 2)
    for note in notes:
        out.write(_paint(f"{pad}{child_indent}   {note}", _DIM if not note.startswith("!") else _RED, colour))
        out.write("\n")
    children = trace.children.get(span["span_id"], [])
    for index, child in enumerate(children):
        _render_span(trace, child, child_indent, index == len(children) - 1, out, width, colour, top=False)


def _details(span: Span, trace: Trace) -> str:
    attributes = span.get("attributes") or {}
    parts = [_status(span)]
    kind = span.get("kind")
    if kind == "PRODUCER":
        parts.append(f"-> queue {attributes.get(telemetry.ATTR_MESSAGING_DESTINATION, '?')}")
    parent = trace.by_id.get(span.get("parent_span_id") or "")
    if kind == "CONSUMER" and parent is not None and parent.get("kind") == "PRODUCER":
        queue = parent.get("attributes", {}).get(telemetry.ATTR_MESSAGING_DESTINATION, "?")
        waited = _duration(_start(span) - _end(parent))
        parts.append(f"<- hop {service_of(parent)} -> {queue} -> {service_of(span)}, waited {waited}")
    for key, label in KEY_ATTRIBUTES:
        value = attributes.get(key)
        if value not in (None, ""):
            parts.append(f"{label}={value}")
    return "  ".join(part for part in parts if part)


def _status(span: Span) -> str:
    attributes = span.get("attributes") or {}
    code = attributes.get(telemetry.ATTR_RPC_STATUS_CODE)
    grpc = f"grpc {_GRPC_CODES.get(code, code)}" if isinstance(code, int) and code != 0 else ""
    if is_error(span):
        message = span.get("status_message") or ""
        return f"[ERROR{': ' + message if message else ''}]" + (f" {grpc}" if grpc else "")
    return f"[{grpc}]" if grpc else "[ok]"


def _notes(span: Span, trace: Trace) -> list[str]:
    """Lines under a span: its links, and the exceptions it recorded."""
    notes = []
    for other in trace.linked_from:
        if any(link.get("span_id") == span["span_id"] for link in other.get("links") or []):
            notes.append(f"linked from {service_of(other)} {other['name']} (trace {other['trace_id']})")
    for link in span.get("links") or []:
        target = trace.by_id.get(link.get("span_id", ""))
        if target is not None:
            notes.append(f"link -> {service_of(target)} {target['name']} (this trace)")
        else:
            notes.append(f"link -> trace {link.get('trace_id')} span {link.get('span_id')}")
    for event in span.get("events") or []:
        if event.get("name") == "exception":
            attributes = event.get("attributes") or {}
            kind = attributes.get("exception.type", "")
            message = attributes.get("exception.message", "")
            notes.append(f"! exception {kind}: {message}".rstrip(": "))
        else:
            notes.append(f"event {event.get('name')}")
    return notes


def _line_colour(critical: bool, error: bool, compensation: bool) -> str:
    if error:
        return _RED
    if compensation:
        return _YELLOW
    return _BOLD if critical else ""


def _paint(text: str, colour: str, enabled: bool) -> str:
    return f"\x1b[{colour}m{text}\x1b[0m" if enabled and colour else text


def _duration(nanoseconds: int) -> str:
    if nanoseconds >= 1_000_000_000:
        return f"{nanoseconds / 1e9:.3f} s"
    if nanoseconds >= 10_000_000:
        return f"{nanoseconds / 1e6:.0f} ms"
    return f"{nanoseconds / 1e6:.2f} ms"


def _start(span: Mapping[str, Any]) -> int:
    return int(span.get("start_ns") or 0)


def _end(span: Mapping[str, Any]) -> int:
    return int(span.get("end_ns") or span.get("start_ns") or 0)


def dump_json(trace: Trace, out: TextIO) -> None:
    json.dump(trace.as_json(), out)
    out.write("\n")
