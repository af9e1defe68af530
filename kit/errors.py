"""Domain errors and their one mapping to gRPC status + google.rpc.ErrorInfo.

A service raises a ``DomainError`` subclass; the error interceptor turns it into a
gRPC status whose details carry ``ErrorInfo(reason=..., domain=ERROR_DOMAIN,
metadata=details)`` (and ``RetryInfo`` when the caller should come back later).
A caller turns a failed RPC back into the same exception with ``from_rpc_error``,
so a domain error crosses service boundaries unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "stylestudio.app"
# What an error may carry back: a status travels in gRPC trailers, which the caller refuses
# past 8-16 KiB (and percent-encodes, so one character may take 12 bytes), and no message
# should quote more of a client's input than it needs to say which.
MAX_MESSAGE_CHARS = 300
MAX_DETAIL_CHARS = 120
EXCERPT_CHARS = 40


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short prefix of ``value`` (text a client sent) to quote in a message."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


class Reason(enum.StrEnum):
    """The ``ErrorInfo.reason`` values of API.md (common/v1/error.proto documents them too)."""

    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INSUFFICIENT_TOKENS = "INSUFFICIENT_TOKENS"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"
    INVALID_FILE_TYPE = "INVALID_FILE_TYPE"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    FEATURE_NOT_IN_PLAN = "FEATURE_NOT_IN_PLAN"
    PROCESSING_ERROR = "PROCESSING_ERROR"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    # Beyond API.md's list: one of the platform's own dependencies (its database, Redis,
    # another service) refused or dropped a connection. PROVIDER_UNAVAILABLE is only ever
    # an outside provider (image generation, payments, OAuth).
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    CONFLICT = "CONFLICT"
    INTERNAL = "INTERNAL"


class DomainError(Exception):
    """A failure that means something to the caller: a reason, a status code, safe details."""

    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    reason: Reason = Reason.VALIDATION_ERROR

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, object] | None = None,
        retry_after_seconds: float | None = None,
        reason: Reason | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        message = excerpt(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.details = {
            excerpt(key, MAX_DETAIL_CHARS): excerpt(value, MAX_DETAIL_CHARS)
            for key, value in (details or {}).items()
        }
        self.retry_after_seconds = retry_after_seconds
        if reason is not None:
            self.reason = reason
        if code is not None:
            self.code = code


class ValidationError(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.VALIDATION_ERROR

    def __init__(self, message: str, *, field: str | None = None, **kwargs: object) -> None:
        details = dict(kwargs.pop("details", None) or {})  # type: ignore[call-overload]
        if field:
            details["field"] = field
        super().__init__(message, details=details, **kwargs)  # type: ignore[arg-type]


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHORIZED


class Forbidden(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.FORBIDDEN


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND


class Conflict(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.CONFLICT


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows this (e.g. canceling a finished generation)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.CONFLICT


class InsufficientTokens(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.INSUFFICIENT_TOKENS

    def __init__(self, required: int, available: int) -> None:
        super().__init__(
            f"Insufficient tokens. Required: {required}, Available: {available}",
            details={"required": required, "available": available},
        )


class FileTooLarge(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.FILE_TOO_LARGE


class InvalidFileType(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_FILE_TYPE


class RateLimited(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RATE_LIMITED


class QuotaExceeded(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.QUOTA_EXCEEDED


class FeatureNotInPlan(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.FEATURE_NOT_IN_PLAN


class ProcessingError(DomainError):
    code = grpc.StatusCode.INTERNAL
    reason = Reason.PROCESSING_ERROR


class ProviderUnavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.PROVIDER_UNAVAILABLE


# What a client is told to wait before trying again when a dependency is down.
DEPENDENCY_RETRY_AFTER_SECONDS = 1


class DependencyUnavailable(DomainError):
    """One of the platform's own dependencies refused or dropped the connection: the database,
    Redis, or another service (by name). Its details carry ``dependency`` and nothing more:
    no host, no port, no SQL."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.SERVICE_UNAVAILABLE

    def __init__(
        self,
        dependency: str,
        message: str | None = None,
        *,
        retry_after_seconds: float | None = DEPENDENCY_RETRY_AFTER_SECONDS,
        **kwargs: object,
    ) -> None:
        details = dict(kwargs.pop("details", None) or {})  # type: ignore[call-overload]
        details.setdefault("dependency", dependency)
        super().__init__(
            message or unavailable_message(dependency),
            details=details,
            retry_after_seconds=retry_after_seconds,
            **kwargs,  # type: ignore[arg-type]
        )

    @property
    def dependency(self) -> str:
        """Which dependency: "database", "redis" or a service's name (from the details, so
        also when the error was rebuilt from a call's ErrorInfo)."""
        return str(self.details.get("dependency", ""))


def unavailable_message(dependency: str) -> str:
    what = {"database": "The database", "redis": "Redis"}.get(dependency, f"The {dependency} service")
    return f"{what} is unavailable; try again shortly"


_BY_REASON: dict[Reason, type[DomainError]] = {
    cls.reason: cls
    for cls in (
        ValidationError,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        InsufficientTokens,
        FileTooLarge,
        InvalidFileType,
        RateLimited,
        QuotaExceeded,
        FeatureNotInPlan,
        ProcessingError,
        ProviderUnavailable,
        DependencyUnavailable,
    )
}

# When an RPC fails without ErrorInfo (a framework error, UNIMPLEMENTED, a deadline),
# the reason the client sees is derived from the status code. RESOURCE_EXHAUSTED without
# ErrorInfo is gRPC's own (a message or metadata over a size limit), not a rate limit: INTERNAL.
REASON_BY_CODE: dict[grpc.StatusCode, Reason] = {
    grpc.StatusCode.INVALID_ARGUMENT: Reason.VALIDATION_ERROR,
    grpc.StatusCode.OUT_OF_RANGE: Reason.VALIDATION_ERROR,
    grpc.StatusCode.UNAUTHENTICATED: Reason.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: Reason.FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: Reason.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Reason.CONFLICT,
    grpc.StatusCode.ABORTED: Reason.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: Reason.CONFLICT,
    # A transport failure (no ErrorInfo: the callee's code never answered) is the callee
    # being unavailable, never an outside provider's problem.
    grpc.StatusCode.UNAVAILABLE: Reason.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Reason.SERVICE_UNAVAILABLE,
    grpc.StatusCode.CANCELLED: Reason.SERVICE_UNAVAILABLE,
}
# CANCELLED among them: a caller that cancels its own call gets asyncio.CancelledError, so a
# CANCELLED status is the callee's doing. A server that begins to stop (SIGTERM, a roll-out)
# cancels the calls that reached it after its GOAWAY was sent but before the caller read it, and
# those that outlast its grace period: the service is going away, try again (another replica).
TRANSPORT_FAILURES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# ...and its text is not passed on either: gRPC wrote it ("received metadata size exceeds
# hard limit", "failed to connect to all addresses; last error: ... 127.0.0.1:50051", ...),
# or a kit fallback did. A caller sees the same words for the same code, always.
MESSAGE_BY_CODE: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.CANCELLED: "The call was canceled",
    grpc.StatusCode.INVALID_ARGUMENT: "The request is not valid",
    grpc.StatusCode.DEADLINE_EXCEEDED: "A service did not answer in time; try again",
    grpc.StatusCode.NOT_FOUND: "Not found",
    grpc.StatusCode.ALREADY_EXISTS: "It already exists",
    grpc.StatusCode.PERMISSION_DENIED: "Not allowed",
    grpc.StatusCode.UNAUTHENTICATED: "Missing or invalid credentials",
    grpc.StatusCode.FAILED_PRECONDITION: "Not possible in the current state",
    grpc.StatusCode.ABORTED: "Interrupted by a concurrent change; try again",
    grpc.StatusCode.OUT_OF_RANGE: "A value is out of range",
    grpc.StatusCode.UNIMPLEMENTED: "Not implemented",
    grpc.StatusCode.UNAVAILABLE: "A service is unavailable; try again",
}
INTERNAL_MESSAGE = "Internal error"


def service_of(full_name: str) -> str:
    """The platform service a gRPC service or method name belongs to, from its package
    ("<org>.<service>.v<N>"): "stylestudio.billing.v1.BillingService" -> "billing"."""
    parts = full_name.strip("/").split(".")
    if len(parts) > 3 and parts[2][:1] == "v" and parts[2][1:].isdigit():
        return parts[1]
    return full_name


def message_for_code(code: grpc.StatusCode) -> str:
    """What a status that no service's code raised (no ErrorInfo of ours) says to a client."""
    return MESSAGE_BY_CODE.get(code, INTERNAL_MESSAGE)


def to_rpc_status(error: DomainError) -> grpc.Status:
    """The gRPC status (with ErrorInfo and, if set, RetryInfo details) for a domain error."""
    info = error_details_pb2.ErrorInfo(reason=str(error.reason), domain=ERROR_DOMAIN, metadata=error.details)
    details = [_pack(info)]
    if error.retry_after_seconds is not None:
        seconds = max(0.0, error.retry_after_seconds)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status(message: str = INTERNAL_MESSAGE) -> grpc.Status:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    return rpc_status.to_status(status)


def from_rpc_error(error: grpc.RpcError, service: str = "") -> DomainError:
    """Rebuild the domain error a failed call carried (or one derived from its status code).

    A call that failed in transport (UNAVAILABLE or DEADLINE_EXCEEDED without our ErrorInfo:
    the callee refused the connection, dropped it, or did not answer in time) becomes
    ``DependencyUnavailable(service)``, ``service`` being the callee's name ("billing")."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    info, retry = _error_details(error)
    if info is not None and info.domain == ERROR_DOMAIN and info.reason in Reason.__members__:
        reason = Reason(info.reason)
        message = (error.details() if hasattr(error, "details") else None) or code.name
    elif code in TRANSPORT_FAILURES:
        return DependencyUnavailable(service or "downstream")
    else:
        reason = REASON_BY_CODE.get(code, Reason.INTERNAL)
        message = message_for_code(code)
    cls = _BY_REASON.get(reason, DomainError)
    result = DomainError.__new__(cls)
    DomainError.__init__(
        result,
        message,
        details=dict(info.metadata) if info is not None else None,
        retry_after_seconds=retry,
        reason=reason,
        code=code,
    )
    return result


def dependency_failure(error: BaseException) -> DependencyUnavailable | None:
    """The ``DependencyUnavailable`` an exception means, or None when it is not a refused,
    dropped or timed-out connection to one of the platform's dependencies.

    Database: a connection PostgreSQL refused or dropped (too many connections, reserved
    slots, shutting down or restarting, refused, lost mid-query) or that the pool could not
    hand out in time. Redis: refused, dropped, timed out, or still loading its data.
    A failed gRPC call in transport is mapped by ``from_rpc_error``, which knows the callee."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DependencyUnavailable):
            return current
        dependency = _dependency_of(current)
        if dependency:
            return DependencyUnavailable(dependency)
        # Only what it was raised *from*: an error raised while handling another (its
        # __context__) may mean something else entirely (a fallback's constraint violation).
        current = current.__cause__
    return None


# SQLSTATE classes and codes of a server that cannot take the work: 08 connection exception,
# 53 insufficient resources (53300 too_many_connections), 57P01-57P05 (admin/crash shutdown,
# cannot connect now, database dropped, idle session timeout).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})


def _dependency_of(error: BaseException) -> str:
    import psycopg
    import psycopg_pool
    import redis.exceptions
    import sqlalchemy.exc

    if isinstance(error, sqlalchemy.exc.TimeoutError | psycopg_pool.PoolTimeout):
        return "database"  # no pooled connection came free in time
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if error.connection_invalidated:
            return "database"
        original = error.orig
        if isinstance(original, BaseException) and _dependency_of(original):
            return "database"
        return ""
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate is None:  # failed to connect, or the connection closed under the query
            return "database"
        if sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES) or sqlstate in _UNAVAILABLE_SQLSTATES:
            return "database"
        return ""
    if isinstance(error, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return ""  # misconfigured, not unavailable
    if isinstance(
        error,
        redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | redis.exceptions.BusyLoadingError,
    ):
        return "redis"
    return ""


def _error_details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    status = None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (AttributeError, TypeError, ValueError):
        status = None
    if status is None:
        return None, None
    return status_error_details(status)


def status_error_details(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    """The ErrorInfo and the RetryInfo delay (seconds) a google.rpc.Status carries, if any."""
    info, retry = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            parsed = error_details_pb2.RetryInfo()
            detail.Unpack(parsed)
            retry = parsed.retry_delay.seconds + parsed.retry_delay.nanos / 1e9
    return info, retry


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
