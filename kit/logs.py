"""Structured logs: one JSON object per line, with the service, trace and request ids, and
the user id once a call's caller is known (the kit's server interceptor sets it).

Never pass secrets or personal data (passwords, tokens, API keys, emails) to a log
call; log ids instead. An exception is logged scrubbed (``describe_error``): its frames,
and for each exception of the chain its class and a short message; for a database error
the SQLSTATE and the names of the constraint, table and column, never the SQL statement,
its bound parameters or the server's DETAIL line (which quotes the row).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
from types import TracebackType

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("stylestudio_request_id", default="")
# The signed-in user a call runs for (or a service acts for): an id, never an email.
user_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("stylestudio_user_id", default="")

_NOT_EXTRAS = ("color_message", "correlation")
_SHORT_MESSAGE_CHARS = 200
# What a psycopg error's diagnostics may name: identifiers of the schema, never values.
_DIAGNOSTIC_NAMES = ("constraint_name", "table_name", "column_name")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def describe_error(error: BaseException) -> str:
    """The error's class and a short message that carries no data: what a log or span may hold."""
    name = type(error).__name__
    original = getattr(error, "orig", None)  # SQLAlchemy's wrapper of the driver's error
    if getattr(error, "statement", None) is not None or isinstance(original, BaseException):
        inner = original if isinstance(original, BaseException) else None
        return f"{name}: {_describe_database_error(inner)}" if inner is not None else name
    if getattr(error, "sqlstate", None) is not None:  # the driver's own error, unwrapped
        return _describe_database_error(error)
    text = str(error).split("\n", 1)[0]
    if len(text) > _SHORT_MESSAGE_CHARS:
        text = text[:_SHORT_MESSAGE_CHARS] + "..."
    return f"{name}: {text}" if text else name


def _describe_database_error(error: BaseException) -> str:
    parts = [type(error).__name__]
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    diagnostics = getattr(error, "diag", None)
    for attribute in _DIAGNOSTIC_NAMES:
        value = getattr(diagnostics, attribute, None) if diagnostics is not None else None
        if value:
            parts.append(f"{attribute.removesuffix('_name')} {value}")
    return ", ".join(parts)


def scrubbed_traceback(error: BaseException) -> str:
    """A traceback with every frame but no exception text beyond ``describe_error``'s."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    chain: list[BaseException] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for index, link in enumerate(reversed(chain)):
        if index:
            lines.append("\nwhile handling it, or because of it:\n")
        lines.append("Traceback (most recent call last):\n")
        lines.extend(traceback.format_tb(link.__traceback__))
        lines.append(describe_error(link) + "\n")
    return "".join(lines).rstrip("\n")


_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        _add_correlation(entry)
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def formatException(self, ei: ExcInfo) -> str:
        return scrubbed_traceback(ei[1]) if ei[1] is not None else ""


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s%(correlation)s")
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = dict(_extras(record))
        _add_correlation(entry)
        record.correlation = "".join(f" {key}={value}" for key, value in entry.items())
        # logging caches the traceback text on the record: make sure it is the scrubbed one.
        record.exc_text = self.formatException(record.exc_info) if record.exc_info else None
        return super().format(record)

    def formatException(self, ei: ExcInfo) -> str:
        return scrubbed_traceback(ei[1]) if ei[1] is not None else ""


def _extras(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra={...}`` fields a log call added (uvicorn's colour copy of the message excluded)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in _NOT_EXTRAS
    }


def _add_correlation(entry: dict[str, object]) -> None:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        entry["trace_id"] = format(ctx.trace_id, "032x")
        entry["span_id"] = format(ctx.span_id, "016x")
    request_id = request_id_var.get()
    if request_id:
        entry["request_id"] = request_id
    user_id = user_id_var.get()
    if user_id:
        entry["user_id"] = user_id


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that would drown the service's own lines.
    for noisy in ("sqlalchemy.engine", "alembic.runtime.migration", "httpx", "grpc._cython"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
