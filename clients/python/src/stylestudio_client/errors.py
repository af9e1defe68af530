"""What a failed call says beyond its status code: the platform's ``google.rpc.ErrorInfo``.

Every error a Style Studio service raises carries, in the ``grpc-status-details-bin`` trailer,
an ErrorInfo with ``domain`` "stylestudio.app", a ``reason`` (INSUFFICIENT_TOKENS, NOT_FOUND,
... the ErrorReason enum of stylestudio/common/v1/error.proto) and ``metadata`` with the
numbers a caller needs ({"required": "3", "available": "1"}); RetryInfo when it is worth
trying again later. docs/clients.md lists which reasons each RPC returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "stylestudio.app"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    # "" when the status carries no ErrorInfo of the platform's (a transport failure, a deadline).
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None


def error_details(error: grpc.RpcError) -> ErrorDetails:
    """The reason, metadata and retry delay of a failed call (grpc.aio's or grpc's)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else "") or ""
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    packed = next((value for key, value in trailers or () if key == STATUS_DETAILS_KEY), None)
    if not isinstance(packed, bytes):
        return ErrorDetails(code, message)
    status = status_pb2.Status.FromString(packed)
    reason, metadata, retry = "", {}, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            delay = error_details_pb2.RetryInfo()
            detail.Unpack(delay)
            retry = delay.retry_delay.seconds + delay.retry_delay.nanos / 1e9
    return ErrorDetails(code, message, reason, metadata, retry)
