"""The local span store: traces kept on the machine, readable without a collector.

Every process (each service, each replica, the gateway) appends its finished spans, one JSON object
per line as ``kit.telemetry.span_as_dict`` writes them, to segment files of its own in one directory:
no two processes write the same file, so no locking is needed. A process writes ``<name>.active``
and renames it ``<name>.jsonl`` when it passes the segment size; then, and about once a minute, it
drops the segments older than the retention and, while the directory holds more than its bound, the
oldest ones (by last write), whoever wrote them. A writer whose open segment was dropped that way
starts a new one at its next write.

Readers (``stylestudio trace``, the operator page) find a trace by generation id, trace id or request
id (``SpanStore.find``). docs/operations.md, "Finding a generation's trace".
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

# The same names kit.telemetry registers (imported there from here would be a cycle).
ATTR_GENERATION_ID = "stylestudio.generation.id"
ATTR_REQUEST_ID = "stylestudio.request.id"

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_RETENTION_HOURS = 72.0
# Where `make run` keeps spans, under its data directory (kit/launcher.py).
SPANS_FOLDER = "spans"
ACTIVE_SUFFIX = ".active"
CLOSED_SUFFIX = ".jsonl"
# How often a writer drops what is past the retention or the bound, besides at each rotation.
PRUNE_INTERVAL_SECONDS = 60.0
# A segment is a sixteenth of the bound (so dropping one frees little), within these limits.
MIN_SEGMENT_BYTES = 4 * 1024
MAX_SEGMENT_BYTES = 4 * 1024 * 1024
_TRACE_ID_LENGTH = 32


@dataclass(frozen=True)
class Segment:
    path: Path
    size: int
    modified: float

    @property
    def active(self) -> bool:
        return self.path.suffix == ACTIVE_SUFFIX


class SpanStore:
    """A directory of span segments: ``append`` writes this process's spans, ``find`` reads a trace.

    ``max_bytes`` bounds the directory (plus the segment each running process has open);
    ``retention_seconds`` drops older segments; ``writer`` names this process's segments.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retention_seconds: float = DEFAULT_RETENTION_HOURS * 3600,
        segment_bytes: int | None = None,
        writer: str = "process",
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.retention_seconds = retention_seconds
        self.segment_bytes = segment_bytes or min(max(max_bytes // 16, MIN_SEGMENT_BYTES), MAX_SEGMENT_BYTES)
        # Unique per process and start: a restarted process (same pid in a container) never
        # appends to a segment it did not open.
        self._prefix = f"{_safe(writer)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._out: IO[bytes] | None = None
        self._path: Path | None = None
        self._sequence = 0
        self._last_prune = 0.0

    # --- writing (one process) -------------------------------------------------------------

    def append(self, spans: Sequence[dict[str, object]]) -> None:
        """Append whole lines, flushed at once, so a reader never sees half a span."""
        if not spans:
            return
        text = b"".join(orjson.dumps(span, option=orjson.OPT_APPEND_NEWLINE) for span in spans)
        with self._lock:
            out = self._writable()
            out.write(text)
            out.flush()
            if out.tell() >= self.segment_bytes:
                self._rotate()
            elif time.monotonic() - self._last_prune >= PRUNE_INTERVAL_SECONDS:
                self._prune_now()

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._rotate(reopen=False)

    def _writable(self) -> IO[bytes]:
        if self._out is not None and os.fstat(self._out.fileno()).st_nlink == 0:
            # Another process dropped this segment (the oldest, past the bound or the retention).
            self._out.close()
            self._out = None
        if self._out is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sequence += 1
            self._path = self.directory / f"{self._prefix}-{self._sequence:06d}{ACTIVE_SUFFIX}"
            self._out = self._path.open("ab")
            if self._sequence == 1:
                self._prune_now()
        return self._out

    def _rotate(self, *, reopen: bool = True) -> None:
        assert self._out is not None and self._path is not None
        self._out.close()
        self._out = None
        try:
            self._path.rename(self._path.with_suffix(CLOSED_SUFFIX))
        except FileNotFoundError:  # dropped by another process meanwhile
            pass
        self._prune_now()
        if not reopen:
            self._path = None

    def _prune_now(self) -> None:
        self._last_prune = time.monotonic()
        self.prune(keep=self._path if self._out is not None else None)

    def prune(self, now: float | None = None, keep: Path | None = None) -> list[Path]:
        """Drop segments older than the retention, then the oldest while over the bound (never
        ``keep``, the writer's open segment); returns what was dropped."""
        now = time.time() if now is None else now
        segments = self.segments()
        dropped: list[Path] = []
        total = sum(segment.size for segment in segments)
        for segment in segments:  # oldest first
            if segment.path == keep:
                continue
            if segment.modified >= now - self.retention_seconds and total <= self.max_bytes:
                continue
            try:
                segment.path.unlink()
            except FileNotFoundError:
                continue
            total -= segment.size
            dropped.append(segment.path)
        return dropped

    # --- reading (any process) -------------------------------------------------------------

    def segments(self) -> list[Segment]:
        """Every segment, oldest (least recently written) first."""
        found: list[Segment] = []
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.name.endswith((ACTIVE_SUFFIX, CLOSED_SUFFIX)):
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            found.append(Segment(Path(entry.path), stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda segment: (segment.modified, segment.path.name))

    def lines(self) -> Iterator[str]:
        """Every stored line, segment by segment (a segment dropped meanwhile is skipped)."""
        for segment in self.segments():
            try:
                with segment.path.open(encoding="utf-8", errors="replace") as lines:
                    yield from lines
            except FileNotFoundError:
                continue

    def find(self, ident: str) -> list[dict[str, object]] | None:
        """All spans of one trace, by start, or None: ``ident`` is a trace id (32 hex), a
        generation id or a request id (``X-Request-Id``). When a generation or request id is
        found in several traces, the one where it appears first is the one returned."""
        ident = ident.strip()
        if not ident or '"' in ident or "\\" in ident:
            return None
        trace_id = self._trace_of(ident)
        if trace_id is None:
            return None
        spans: dict[str, dict[str, object]] = {}
        for line in self.lines():
            if trace_id in line:
                span = _parsed(line)
                if span is not None and span.get("trace_id") == trace_id:
                    spans.setdefault(str(span.get("span_id")), span)
        return sorted(spans.values(), key=lambda span: _number(span.get("start_ns"))) or None

    def linking_to(self, trace_id: str) -> list[dict[str, object]]:
        """Spans of other traces with a link into ``trace_id`` (a batch consumer's span links the
        events it handled), by start."""
        found = []
        for line in self.lines():
            if trace_id not in line:
                continue
            span = _parsed(line)
            links = span.get("links") if span is not None else None
            if span is None or span.get("trace_id") == trace_id or not isinstance(links, list):
                continue
            if any(isinstance(link, dict) and link.get("trace_id") == trace_id for link in links):
                found.append(span)
        return sorted(found, key=lambda span: _number(span.get("start_ns")))

    def _trace_of(self, ident: str) -> str | None:
        as_trace_id = ident.lower() if len(ident) == _TRACE_ID_LENGTH else None
        needles = {json.dumps(ident), *([json.dumps(as_trace_id)] if as_trace_id else [])}
        first: tuple[int, str] | None = None
        for line in self.lines():
            if not any(needle in line for needle in needles):
                continue
            span = _parsed(line)
            if span is None:
                continue
            if as_trace_id is not None and span.get("trace_id") == as_trace_id:
                return as_trace_id
            attributes = span.get("attributes")
            if isinstance(attributes, dict) and ident in (
                attributes.get(ATTR_GENERATION_ID),
                attributes.get(ATTR_REQUEST_ID),
            ):
                start = _number(span.get("start_ns"))
                if first is None or start < first[0]:
                    first = (start, str(span.get("trace_id")))
        return first[1] if first else None


def _parsed(line: str) -> dict[str, object] | None:
    try:
        span = json.loads(line)
    except ValueError:  # a line being written, or a torn one after a crash
        return None
    return span if isinstance(span, dict) else None


def _number(value: object) -> int:
    return value if isinstance(value, int) else 0


def _safe(name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in name) or "process"
