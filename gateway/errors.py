"""gRPC status (+ google.rpc.ErrorInfo, RetryInfo) -> API.md's HTTP status and JSON error body.

One table: the status code gives the HTTP status, and a reason the contract names
overrides it (INSUFFICIENT_TOKENS is FAILED_PRECONDITION on the wire but 402 over HTTP).
The body is ``{"error": {"code", "status", "reason", "message", "details"}}``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import grpc
import orjson
from google.rpc import error_details_pb2, status_pb2

from kit.errors import (
    DEPENDENCY_RETRY_AFTER_SECONDS,
    ERROR_DOMAIN,
    INTERNAL_MESSAGE,
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_CHARS,
    REASON_BY_CODE,
    TRANSPORT_FAILURES,
    Reason,
    excerpt,
    message_for_code,
    status_error_details,
    unavailable_message,
)
from kit.ratelimits import RATE_LIMIT_HEADERS

log = logging.getLogger("stylestudio.gateway")

HTTP_STATUS_BY_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    # A backend's CANCELLED, without ErrorInfo, is a transport failure (kit.errors.TRANSPORT_FAILURES):
    # 503. 499 is the gateway's own note of a client that went away (app.py).
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    # A call that timed out is a service not keeping up: 503 with Retry-After, as UNAVAILABLE.
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    # A service's RATE_LIMITED and QUOTA_EXCEEDED are 429 by their reason; without one, a
    # RESOURCE_EXHAUSTED is gRPC's own size limit (kit.errors.REASON_BY_CODE).
    grpc.StatusCode.RESOURCE_EXHAUSTED: 500,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# Reasons whose HTTP status is not their code's (common/v1/error.proto gives each one).
HTTP_STATUS_BY_REASON: dict[str, int] = {
    Reason.INSUFFICIENT_TOKENS: 402,
    Reason.FILE_TOO_LARGE: 413,
    Reason.INVALID_FILE_TYPE: 415,
    Reason.RATE_LIMITED: 429,
    Reason.QUOTA_EXCEEDED: 429,
    Reason.FEATURE_NOT_IN_PLAN: 403,
    Reason.CONFLICT: 409,
    Reason.INTERNAL: 500,
}

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(slots=True)
class ApiError(Exception):
    """An error answered to the client: what API.md's error body says, plus Retry-After."""

    http_status: int
    status: str
    reason: str
    message: str
    details: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: int | None = None
    # Response headers a service sent as initial metadata (see service_headers).
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Messages may quote what the client sent (a parameter's name, a JSON parser's view
        # of a value): only a short prefix of it goes back.
        self.message = excerpt(self.message, MAX_MESSAGE_CHARS)
        self.details = {
            excerpt(key, MAX_DETAIL_CHARS): excerpt(value, MAX_DETAIL_CHARS)
            for key, value in self.details.items()
        }

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "code": self.http_status,
                "status": self.status,
                "reason": self.reason,
                "message": self.message,
                "details": self.details,
            }
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def headers(self) -> list[tuple[bytes, bytes]]:
        if self.retry_after_seconds is None:
            return list(self.extra_headers)
        return [(b"retry-after", str(self.retry_after_seconds).encode()), *self.extra_headers]


def bearer_challenge(credential_sent: bool) -> tuple[bytes, bytes]:
    """The WWW-Authenticate header of a 401 (RFC 6750 section 3): the scheme and realm, and
    ``invalid_token`` when a credential was sent and refused (none sent: no error code)."""
    if credential_sent:
        return (b"www-authenticate", b'Bearer realm="stylestudio", error="invalid_token"')
    return (b"www-authenticate", b'Bearer realm="stylestudio"')


def service_headers(metadata: object) -> list[tuple[bytes, bytes]]:
    """The HTTP response headers a service asked for in its initial metadata: only the
    contract's names (kit.ratelimits.RATE_LIMIT_HEADERS), printable values."""
    if not metadata:
        return []
    headers = []
    for key, value in metadata:  # type: ignore[attr-defined]
        if key in RATE_LIMIT_HEADERS and isinstance(value, str) and value.isascii() and value.isprintable():
            headers.append((key.encode(), value.encode()))
    return headers


def bad_request(message: str, field_name: str | None = None) -> ApiError:
    details = {"field": field_name} if field_name else {}
    return ApiError(400, "INVALID_ARGUMENT", Reason.VALIDATION_ERROR, message, details)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "UNAUTHENTICATED", Reason.UNAUTHORIZED, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "PERMISSION_DENIED", Reason.FORBIDDEN, message)


def not_found(message: str = "No such route") -> ApiError:
    return ApiError(404, "NOT_FOUND", Reason.NOT_FOUND, message)


def method_not_allowed(allowed: list[str]) -> ApiError:
    return ApiError(
        405, "UNIMPLEMENTED", Reason.VALIDATION_ERROR, "Method not allowed", {"allow": ", ".join(allowed)}
    )


def payload_too_large(limit: int, reason: str = Reason.VALIDATION_ERROR) -> ApiError:
    return ApiError(
        413, "INVALID_ARGUMENT", reason, f"The request body is over {limit} bytes", {"limit": str(limit)}
    )


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, "INVALID_ARGUMENT", Reason.VALIDATION_ERROR, message)


def busy(retry_after_seconds: int) -> ApiError:
    """The gateway runs as many requests as it may (admission control): come back shortly."""
    message = f"The service is busy; try again in {retry_after_seconds} s"
    details = {"scope": "gateway", "retry_after_seconds": str(retry_after_seconds)}
    return ApiError(429, "RESOURCE_EXHAUSTED", Reason.RATE_LIMITED, message, details, retry_after_seconds)


def internal_error() -> ApiError:
    return ApiError(500, "INTERNAL", Reason.INTERNAL, INTERNAL_MESSAGE)


def headers_too_large(message: str, details: dict[str, str]) -> ApiError:
    return ApiError(431, "INVALID_ARGUMENT", Reason.VALIDATION_ERROR, message, details)


def from_rpc_error(error: grpc.aio.AioRpcError, default_retry_after: int, service: str = "") -> ApiError:
    """The client's view of a failed call, from its status code, ErrorInfo and RetryInfo.

    Only a status a service raised itself (with ErrorInfo of ERROR_DOMAIN) is passed on with
    its message. Any other was made by gRPC (a refused connection, a deadline, a message or
    metadata over a size limit) or by a kit fallback: the client gets its code's fixed words,
    and the gateway's log the real ones. A transport failure (UNAVAILABLE, DEADLINE_EXCEEDED or
    CANCELLED without ErrorInfo) is 503 SERVICE_UNAVAILABLE naming ``service``.
    Every 429 and 503 carries Retry-After: the service's RetryInfo, else
    ``default_retry_after`` (429) or kit.errors.DEPENDENCY_RETRY_AFTER_SECONDS (503)."""
    code = error.code()
    info, retry_delay = _status_details(error.trailing_metadata())
    http_status = HTTP_STATUS_BY_CODE.get(code, 500)
    if info is not None and info.domain == ERROR_DOMAIN and info.reason:
        reason = info.reason
        http_status = HTTP_STATUS_BY_REASON.get(reason, http_status)
        message = error.details() or code.name
        details = dict(info.metadata)
    elif code in TRANSPORT_FAILURES:
        log.warning(
            "call failed in transport",
            extra={"code": code.name, "service": service, "grpc": excerpt(error.details(), MAX_DETAIL_CHARS)},
        )
        dependency = service or "downstream"
        return ApiError(
            503,
            grpc.StatusCode.UNAVAILABLE.name,
            Reason.SERVICE_UNAVAILABLE,
            unavailable_message(dependency),
            {"dependency": dependency},
            DEPENDENCY_RETRY_AFTER_SECONDS if retry_delay is None else max(0, math.ceil(retry_delay)),
        )
    else:
        reason = str(REASON_BY_CODE.get(code, Reason.INTERNAL))
        message, details = message_for_code(code), {}
        if http_status >= 500:
            log.warning(
                "call failed outside any service's code",
                extra={"code": code.name, "grpc": excerpt(error.details(), MAX_DETAIL_CHARS)},
            )
    if http_status >= 500 and reason == Reason.INTERNAL:
        message = INTERNAL_MESSAGE  # may carry a server-side exception text: never pass it on
    retry_after = None
    if retry_delay is not None:
        retry_after = max(0, math.ceil(retry_delay))
    elif http_status == 429:
        retry_after = default_retry_after
    elif http_status == 503:
        retry_after = DEPENDENCY_RETRY_AFTER_SECONDS
    return ApiError(
        http_status,
        code.name,
        reason,
        message,
        details,
        retry_after,
        service_headers(error.initial_metadata()),
    )


def _status_details(
    metadata: object,
) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    raw = None
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == STATUS_DETAILS_KEY:
            raw = value
            break
    if not isinstance(raw, bytes):
        return None, None
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a malformed details blob must not turn an error into a crash
        return None, None
    return status_error_details(status)
