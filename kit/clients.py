"""Calling other services: one channel per service, reused, with a service credential,
a deadline on every call, the request id and the trace context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from kit.auth import ServiceCredentials
from kit.interceptors import REQUEST_ID_HEADER
from kit.logs import request_id_var
from kit.settings import PlatformSettings

StubT = TypeVar("StubT")
Continuation = Callable[..., Any]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # A restarted peer (deploy, crash) is found again within ~2 s, not after minutes of backoff.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


class _CallDefaults:
    """Adds the service credential, the request id and a default deadline to every call."""

    def __init__(self, credentials: ServiceCredentials | None, deadline_seconds: float) -> None:
        self._credentials = credentials
        self._deadline = deadline_seconds

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if self._credentials is not None and "authorization" not in metadata:
            metadata["authorization"] = f"Bearer {self._credentials.token()}"
        request_id = request_id_var.get()
        if request_id and REQUEST_ID_HEADER not in metadata:
            metadata[REQUEST_ID_HEADER] = request_id
        timeout = details.timeout if details.timeout is not None else self._deadline
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first call type it implements only, so each
# call type needs its own interceptor object.
class _UnaryUnaryDefaults(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_unary(self, continuation: Continuation, details: Any, request: Any) -> Any:
        return await continuation(self._defaults.details(details), request)


class _UnaryStreamDefaults(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_unary_stream(self, continuation: Continuation, details: Any, request: Any) -> Any:
        return await continuation(self._defaults.details(details), request)


class _StreamUnaryDefaults(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_unary(self, continuation: Continuation, details: Any, requests: Any) -> Any:
        return await continuation(self._defaults.details(details), requests)


class _StreamStreamDefaults(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, defaults: _CallDefaults) -> None:
        self._defaults = defaults

    async def intercept_stream_stream(self, continuation: Continuation, details: Any, requests: Any) -> Any:
        return await continuation(self._defaults.details(details), requests)


def open_channel(
    target: str,
    credentials: ServiceCredentials | None = None,
    deadline_seconds: float = 10.0,
) -> grpc.aio.Channel:
    defaults = _CallDefaults(credentials, deadline_seconds)
    interceptors: list[Any] = [
        *aio_client_interceptors(),
        _UnaryUnaryDefaults(defaults),
        _UnaryStreamDefaults(defaults),
        _StreamUnaryDefaults(defaults),
        _StreamStreamDefaults(defaults),
    ]
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)


class ServiceClients:
    """Stubs for the other services, each on one long-lived channel."""

    def __init__(self, settings: PlatformSettings, credentials: ServiceCredentials) -> None:
        self._settings = settings
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, type], Any] = {}

    def channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = open_channel(
                self._settings.address_of(service), self._credentials, self._settings.rpc_deadline_seconds
            )
        return self._channels[service]

    def stub(self, service: str, stub_type: type[StubT]) -> StubT:
        key = (service, stub_type)
        if key not in self._stubs:
            self._stubs[key] = stub_type(self.channel(service))  # type: ignore[call-arg]
        return self._stubs[key]  # type: ignore[no-any-return]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
