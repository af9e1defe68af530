"""Structured logs: one JSON object per line, with the service, trace and request ids.

Never pass secrets or personal data (passwords, tokens, API keys, emails) to a log
call; log ids instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("stylestudio_request_id", default="")

_NOT_EXTRAS = ("color_message", "correlation")
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


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s%(correlation)s")
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = dict(_extras(record))
        _add_correlation(entry)
        record.correlation = "".join(f" {key}={value}" for key, value in entry.items())
        return super().format(record)


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


def setup_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter that would drown the service's own lines.
    for noisy in ("sqlalchemy.engine", "alembic.runtime.migration", "httpx", "grpc._cython"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
