"""GET /v1/admin/traces/{id}: one trace, by generation id, trace id or request id (admins only).

The answer is exactly what ``stylestudio trace <id> --json`` prints, ``{"trace_id", "spans"}``,
read from the platform's local span store. A gateway deployed without one (production, where
traces go to the collector and Jaeger) answers 503 saying so, never a 500.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ApiError, bad_request, not_found
from kit.errors import Reason
from kit.spanstore import SpanStore
from kit.tracetree import Trace

TRACE_ROUTE = "/v1/admin/traces/{id}"
# Generation ids (UUIDs), trace ids (32 hex digits) and request ids (X-Request-Id: printable ASCII).
_IDENT = re.compile(r"[\x21-\x7e]{1,128}")

TraceDocument = dict[str, Any]
Lookup = Callable[[str], TraceDocument | None]


class AdminTraces:
    """Finds traces in the local span store (``lookup``), or says there is none to read."""

    def __init__(self, lookup: Lookup | None) -> None:
        self._lookup = lookup

    async def document(self, ident: str) -> bytes:
        if self._lookup is None:
            raise store_not_configured()
        if not _IDENT.fullmatch(ident):
            raise bad_request("A trace is named by a generation id, trace id or request id", "id")
        found = await asyncio.to_thread(self._lookup, ident)
        if found is None:
            raise not_found(f"No trace for {ident!r} in the local span store")
        return orjson.dumps(found)


def store_not_configured() -> ApiError:
    """503 without Retry-After: asking again will not help; the traces are elsewhere."""
    return ApiError(
        503,
        "UNAVAILABLE",
        Reason.SERVICE_UNAVAILABLE,
        "This gateway keeps no local span store (STYLESTUDIO_SPAN_STORE_DIR is not set): "
        "read traces in Jaeger (docs/operations.md)",
        {"dependency": "span_store"},
    )


def span_store_lookup(directory: str) -> Lookup | None:
    """Traces of the local span store in ``directory`` (kit/spanstore.py); None: no store."""
    if not directory:
        return None
    store = SpanStore(Path(directory))

    def lookup(ident: str) -> TraceDocument | None:
        spans = store.find(ident)
        # The same document as `stylestudio trace --json` (kit/cli.py): each span with "critical".
        return None if spans is None else Trace(spans).as_json()

    return lookup
