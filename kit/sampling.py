"""Which traces are kept: every process's sampler, and the local span store's tail decision.

Head sampling (the default, docs/operations.md "Sampling"): parent-based, so a call, an event or a
job continues the decision of the trace it belongs to; a new trace is sampled with the probability
``STYLESTUDIO_TRACE_SAMPLE_RATIO``, 1.0 (everything) in development and ``PRODUCTION_SAMPLE_RATIO``
in production unless set. When that setting is not given, the standard ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG`` choose the sampler instead.

Tail decision (the local span store only): with a store, spans the sampler leaves out are still
recorded (not exported over OTLP), and ``KeptTraces`` holds each local part of a trace (the spans
under one local root: a request, an RPC, an event or a job this process handled) until that root
ends; then it keeps the part if the trace was sampled, if any of its spans failed, or if the root
took ``STYLESTUDIO_TRACE_KEEP_SLOWER_THAN_SECONDS`` or longer. The decision is each process's own:
a failure kept in one process does not bring back what another left out. The collector's
``tail_sampling`` (deploy/otel-collector.yaml) makes the same decision on whole traces.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace import sampling as otel_sampling
from opentelemetry.trace import Link, SpanKind, StatusCode
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from kit.spanstore import SpanStore

# A new trace in production is sampled with this probability unless the ratio is set.
PRODUCTION_SAMPLE_RATIO = 0.1
# Ended spans held, and local parts open, past which the oldest part is decided early with what
# it holds (a root that never ends, or far too many at once); what it ends later is not kept.
MAX_HELD_SPANS = 20_000
MAX_OPEN_PARTS = 20_000

_OTEL_SAMPLERS: Mapping[str, otel_sampling.Sampler] = {
    "always_on": otel_sampling.ALWAYS_ON,
    "always_off": otel_sampling.ALWAYS_OFF,
    "parentbased_always_on": otel_sampling.DEFAULT_ON,
    "parentbased_always_off": otel_sampling.DEFAULT_OFF,
}
_OTEL_RATIO_SAMPLERS = {
    "traceidratio": otel_sampling.TraceIdRatioBased,
    "parentbased_traceidratio": otel_sampling.ParentBasedTraceIdRatio,
}


def head_sampler(
    ratio: float | None, *, production: bool, env: Mapping[str, str] = os.environ
) -> otel_sampling.Sampler:
    """The platform's ratio if set; else the OTEL_TRACES_SAMPLER variables if set; else the default."""
    if ratio is not None:
        return otel_sampling.ParentBasedTraceIdRatio(ratio)
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if name in _OTEL_SAMPLERS:
        return _OTEL_SAMPLERS[name]
    if name in _OTEL_RATIO_SAMPLERS:
        try:
            argument = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            argument = 1.0
        return _OTEL_RATIO_SAMPLERS[name](argument)
    return otel_sampling.ParentBasedTraceIdRatio(PRODUCTION_SAMPLE_RATIO if production else 1.0)


class RecordEverything(otel_sampling.Sampler):
    """``sampler``'s decision, except that a span it drops is still recorded (not sampled): the
    local store decides on it when its local root ends, the OTLP export leaves it out."""

    def __init__(self, sampler: otel_sampling.Sampler) -> None:
        self.sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> otel_sampling.SamplingResult:
        result = self.sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is otel_sampling.Decision.DROP:
            return otel_sampling.SamplingResult(
                otel_sampling.Decision.RECORD_ONLY, result.attributes, result.trace_state
            )
        return result

    def get_description(self) -> str:
        return f"RecordEverything{{{self.sampler.get_description()}}}"


@dataclass
class _LocalPart:
    """The spans under one local root, held until it ends."""

    spans: list[ReadableSpan] = field(default_factory=list)
    members: list[int] = field(default_factory=list)


class KeptTraces(SpanProcessor):
    """Writes to ``store`` each local part of a trace that was sampled, failed, or was slow."""

    def __init__(
        self,
        store: SpanStore,
        keep_slower_than_seconds: float,
        as_dict: Callable[[ReadableSpan], dict[str, object]],
    ) -> None:
        self._as_dict = as_dict
        self.store = store
        self.slow_ns = int(keep_slower_than_seconds * 1e9)
        self._lock = threading.Lock()
        self._root_of: dict[int, int] = {}  # span id -> its local root's span id
        self._parts: OrderedDict[int, _LocalPart] = OrderedDict()  # by local root, oldest first
        self._held = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        span_id = span.context.span_id
        parent = span.parent
        with self._lock:
            # A parent in another process (or none) makes a local root; so does a parent whose
            # part was already decided (a late child stands alone).
            root = (
                span_id if parent is None or parent.is_remote else self._root_of.get(parent.span_id, span_id)
            )
            self._root_of[span_id] = root
            self._parts.setdefault(root, _LocalPart()).members.append(span_id)

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.context.span_id
        decided: list[tuple[_LocalPart, bool]] = []
        with self._lock:
            root = self._root_of.get(span_id, span_id)
            part = self._parts.get(root)
            if part is None:  # started before this processor
                return
            part.spans.append(span)
            self._held += 1
            if span_id == root:
                decided.append((self._take(root), self._keeps(part, span)))
            while (self._held > MAX_HELD_SPANS or len(self._parts) > MAX_OPEN_PARTS) and self._parts:
                oldest = next(iter(self._parts))
                early = self._take(oldest)
                decided.append((early, self._keeps(early, None)))
        self._write(decided)

    def _take(self, root: int) -> _LocalPart:
        part = self._parts.pop(root)
        for member in part.members:
            self._root_of.pop(member, None)
        self._held -= len(part.spans)
        return part

    def _keeps(self, part: _LocalPart, root: ReadableSpan | None) -> bool:
        if any(span.context.trace_flags.sampled for span in part.spans):
            return True
        if any(span.status.status_code is StatusCode.ERROR for span in part.spans):
            return True
        return (
            root is not None
            and root.end_time is not None
            and root.start_time is not None
            and root.end_time - root.start_time >= self.slow_ns
        )

    def _write(self, decided: list[tuple[_LocalPart, bool]]) -> None:
        kept = [self._as_dict(span) for part, keep in decided if keep for span in part.spans]
        if kept:
            self.store.append(kept)

    def shutdown(self) -> None:
        with self._lock:
            decided = [(self._take(root), False) for root in list(self._parts)]
        self._write([(part, self._keeps(part, None)) for part, _ in decided])
        self.store.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every decided part is written at once
