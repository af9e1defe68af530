"""A grpc.aio channel whose calls carry a service identity's credential, a deadline and the
caller's trace context; generated stubs take it like any channel.

    async with connect("generation.internal:50054", identity) as channel:
        stub = GenerationServiceStub(channel)                    # as the service itself
        for_user = GenerationServiceStub(channel.for_user(uid))  # on behalf of a user

What each call gets unless it passes its own:
- ``authorization``: the identity's credential (naming the user with ``for_user``);
- a deadline: ``deadline_seconds`` for calls answered once, ``stream_deadline_seconds`` for
  calls answered with a stream (a watch lasts as long as the work it watches);
- the trace context: with opentelemetry-api installed (the ``tracing`` extra), the current
  span's W3C ``traceparent``/``tracestate`` and the ``baggage``, through OpenTelemetry's
  configured propagator, so the platform's spans join the caller's trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc

from stylestudio_client.identity import ServiceIdentity

DEFAULT_DEADLINE_SECONDS = 10.0
DEFAULT_STREAM_DEADLINE_SECONDS = 600.0

# The platform's own channels' options (kit/clients.py; tests/clients keeps the two equal):
# keepalive pings on quiet streams, quick reconnects, 32 MiB messages.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

Metadata = Sequence[tuple[str, str | bytes]]


def _trace_context() -> Callable[[], list[tuple[str, str]]]:
    try:
        from opentelemetry import propagate
    except ImportError:
        return list

    def inject() -> list[tuple[str, str]]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return list(carrier.items())

    return inject


trace_context = _trace_context()
"""The current trace context as metadata (empty without opentelemetry-api or a current span)."""


class _CallDefaults:
    __slots__ = ("deadline", "identity", "on_behalf_of", "stream_deadline")

    def __init__(
        self, identity: ServiceIdentity, on_behalf_of: str, deadline: float, stream_deadline: float
    ) -> None:
        self.identity = identity
        self.on_behalf_of = on_behalf_of
        self.deadline = deadline
        self.stream_deadline = stream_deadline

    def metadata(self, given: Metadata | None) -> list[tuple[str, str | bytes]]:
        metadata: list[tuple[str, str | bytes]] = list(given or ())
        names = {key for key, _ in metadata}
        if "authorization" not in names:
            metadata.append(("authorization", f"Bearer {self.identity.token(self.on_behalf_of)}"))
        metadata.extend((key, value) for key, value in trace_context() if key not in names)
        return metadata


class _Method:
    """One method of a Channel: fills the call's defaults and leaves the call to grpc.aio."""

    __slots__ = ("_defaults", "_inner", "_streams")

    def __init__(self, inner: Any, defaults: _CallDefaults, streams: bool) -> None:
        self._inner, self._defaults, self._streams = inner, defaults, streams

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
        **kw: Any,
    ) -> Any:
        if timeout is None:
            timeout = self._defaults.stream_deadline if self._streams else self._defaults.deadline
        return self._inner(request, timeout=timeout, metadata=self._defaults.metadata(metadata), **kw)


class Channel:
    """A channel that calls as ``identity`` (for a user after ``for_user``). Closing it, or any
    channel made from it by ``for_user``, closes their one connection."""

    def __init__(self, channel: grpc.aio.Channel, defaults: _CallDefaults) -> None:
        self._channel = channel
        self._defaults = defaults

    def for_user(self, user_id: str) -> Channel:
        """The same connection, calling on behalf of ``user_id``: only the USER RPCs whose
        ``on_behalf_callers`` option names this identity accept it (docs/security.md)."""
        if not user_id:
            raise ValueError("for_user needs the user's id")
        defaults = self._defaults
        return Channel(
            self._channel,
            _CallDefaults(defaults.identity, user_id, defaults.deadline, defaults.stream_deadline),
        )

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self._channel.unary_unary(method, *args, **kwargs), self._defaults, streams=False)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self._channel.unary_stream(method, *args, **kwargs), self._defaults, streams=True)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self._channel.stream_unary(method, *args, **kwargs), self._defaults, streams=False)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Method(self._channel.stream_stream(method, *args, **kwargs), self._defaults, streams=True)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)  # the rest of grpc.aio.Channel (get_state, channel_ready ...)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def connect(
    target: str,
    identity: ServiceIdentity,
    *,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
    stream_deadline_seconds: float = DEFAULT_STREAM_DEADLINE_SECONDS,
    tls: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> Channel:
    """A channel to one service (``host:port``) calling as ``identity``.

    ``tls``: ``grpc.ssl_channel_credentials(root_certificates=<the platform's CA>,
    private_key=..., certificate_chain=...)`` when the platform runs with
    STYLESTUDIO_GRPC_TLS (mutual TLS: the certificate must be signed by the platform's CA);
    plaintext otherwise. ``options`` add to or override CHANNEL_OPTIONS."""
    merged = list({**dict(CHANNEL_OPTIONS), **dict(options)}.items())
    if tls is None:
        channel = grpc.aio.insecure_channel(target, options=merged)
    else:
        channel = grpc.aio.secure_channel(target, tls, options=merged)
    return Channel(channel, _CallDefaults(identity, "", deadline_seconds, stream_deadline_seconds))
