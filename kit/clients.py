"""Calling other services: one channel per service, reused, with a service credential,
a deadline on every call, the request id and the trace context."""

from __future__ import annotations

from functools import partial
from typing import Any, TypeVar

import grpc
from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from kit import telemetry
from kit.auth import ServiceCredentials
from kit.interceptors import REQUEST_ID_HEADER
from kit.logs import request_id_var
from kit.settings import PlatformSettings
from kit.tls import ChannelOptions, TransportSecurity, dial

StubT = TypeVar("StubT")
_tracer = trace.get_tracer("stylestudio.rpc")

# How often a connection with calls open is pinged (both ends read it: kit.server's ping policy
# accepts pings at half this interval, so clients and servers cannot drift apart).
# STYLESTUDIO_GRPC_KEEPALIVE_MS (PlatformSettings.grpc_keepalive_ms) overrides it.
DEFAULT_KEEPALIVE_MS = 30_000


def channel_options(keepalive_ms: int = DEFAULT_KEEPALIVE_MS) -> list[tuple[str, int]]:
    """The options of every channel the platform opens (services, gateway, harness)."""
    return [
        ("grpc.max_receive_message_length", 32 * 1024 * 1024),
        ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ("grpc.keepalive_time_ms", keepalive_ms),
        # gRPC's default (2) stops pinging after two pings until the client sends data: a
        # quiet watch stream would go unchecked for its whole life. The servers accept it.
        ("grpc.http2.max_pings_without_data", 0),
        # A restarted peer (deploy, crash) is found again within ~2 s, not after minutes of backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


CHANNEL_OPTIONS = channel_options()


class _CallDefaults:
    """What every outgoing call carries: the service credential, the request id, the trace context
    and baggage, a deadline."""

    __slots__ = ("credentials", "deadline")

    def __init__(self, credentials: ServiceCredentials | None, deadline_seconds: float) -> None:
        self.credentials = credentials
        self.deadline = deadline_seconds

    def metadata(self, given: Any, span: trace.Span) -> list[tuple[str, str | bytes]]:
        metadata: list[tuple[str, str | bytes]] = list(given) if given else []
        names = {key for key, _ in metadata}
        if self.credentials is not None and "authorization" not in names:
            metadata.append(("authorization", f"Bearer {self.credentials.token()}"))
        request_id = request_id_var.get()
        if request_id and REQUEST_ID_HEADER not in names:
            metadata.append((REQUEST_ID_HEADER, request_id))
        if "traceparent" not in names:
            metadata.extend(telemetry.traceparent_of(span))
        if telemetry.BAGGAGE_HEADER not in names and (baggage := telemetry.current_baggage()):
            metadata.append((telemetry.BAGGAGE_HEADER, baggage))
        return metadata


class _TracedMultiCallable:
    """One method of a TracedChannel: opens the CLIENT span, fills the call's defaults, and ends
    the span from the call's done callback. The call object is grpc.aio's own, untouched."""

    __slots__ = ("_attributes", "_defaults", "_inner", "_name")

    def __init__(self, inner: Any, method: str, defaults: _CallDefaults) -> None:
        self._inner, self._name, self._defaults = inner, method, defaults
        self._attributes = telemetry.rpc_attributes(method)

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        **options: Any,
    ) -> Any:
        span = _tracer.start_span(self._name, kind=SpanKind.CLIENT, attributes=self._attributes)
        try:
            call = self._inner(
                request,
                timeout=self._defaults.deadline if timeout is None else timeout,
                metadata=self._defaults.metadata(metadata, span),
                **options,
            )
        except BaseException:
            telemetry.end_rpc_span(span, grpc.StatusCode.UNKNOWN, server=False)
            raise
        call.add_done_callback(partial(_end_client_span, span))
        return call


def _end_client_span(span: trace.Span, call: Any) -> None:
    # The call is done, so its status is set; grpc.aio only exposes it through coroutines.
    status = getattr(call._cython_call, "_status", None)
    code = CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(status.code()) if status is not None else None
    telemetry.end_rpc_span(span, code or grpc.StatusCode.CANCELLED, server=False)


class TracedChannel:
    """A grpc.aio channel whose calls carry the caller's credential, request id, deadline and
    trace context, each in a CLIENT span (OTel's RPC conventions). Generated stubs take it
    like a channel.

    Not grpc.aio client interceptors: an intercepted call runs through extra tasks and
    wrapper calls (opentelemetry-instrumentation-grpc's plus ours took a unary call from
    about 190 to 360 us of CPU); this adds one span and a done callback."""

    def __init__(self, channel: grpc.aio.Channel, defaults: _CallDefaults) -> None:
        self._channel = channel
        self._defaults = defaults

    def _traced(self, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        inner = getattr(self._channel, kind)(method, *args, **kwargs)
        return _TracedMultiCallable(inner, method, self._defaults)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._traced("unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._traced("unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._traced("stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._traced("stream_stream", method, args, kwargs)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)  # the rest of grpc.aio.Channel (wait_for_state_change, ...)

    async def __aenter__(self) -> TracedChannel:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


# Several replicas of one service behind one address setting: each call goes to the next
# replica that is up (a replica that is down is skipped until it is back).
ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")

# A ``dns:`` target is asked again when a connection of its channel ends (a pod stopping, a
# server's maximum connection age: kit.server), at most this often (gRPC's default is 30 s), so
# pods added by a scale-up are found within seconds of the next such end (docs/operations.md,
# "Balancing calls over replicas").
DNS_MIN_RESOLUTION_INTERVAL_MS = 5_000
DNS_REFRESH = ("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_RESOLUTION_INTERVAL_MS)


def channel_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """gRPC's target for an address setting, and the options it needs beside CHANNEL_OPTIONS.

    ``host:port`` is used as it is: one connection, to the first address the name has (on
    Kubernetes, a ClusterIP Service: kube-proxy pins the connection, and so every call, to one
    pod). ``dns:///name:port`` (or ``dns://dns-server/name:port``) is balanced round robin over
    every address the name has, asked again as connections end (a headless Service: one address
    per ready pod). A comma-separated list (``127.0.0.1:7001,127.0.0.1:7002``, replicas of one
    service) becomes gRPC's ``ipv4:`` (or ``ipv6:``) target, balanced round robin; a list already
    written as such a target (``ipv4:a:1,b:2``) is only balanced.
    """
    if address.startswith("dns:"):
        return address, [ROUND_ROBIN, DNS_REFRESH]
    if "," not in address:
        return address, []
    if address.startswith(("ipv4:", "ipv6:")):
        return address, [ROUND_ROBIN]
    addresses = [part.strip() for part in address.split(",") if part.strip()]
    scheme = "ipv6" if any(part.startswith("[") for part in addresses) else "ipv4"
    return f"{scheme}:{','.join(addresses)}", [ROUND_ROBIN]


def open_channel(
    target: str,
    credentials: ServiceCredentials | None = None,
    deadline_seconds: float = 10.0,
    security: TransportSecurity | None = None,
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS,
) -> TracedChannel:
    """A channel to ``target``: plaintext, or TLS (mutual when ``security`` has a certificate).

    ``target`` may list several replicas, comma-separated, or name them with ``dns:///``
    (``channel_target``)."""
    channel = dial_service(target, security, channel_options(keepalive_ms))
    return TracedChannel(channel, _CallDefaults(credentials, deadline_seconds))


def dial_service(
    address: str, security: TransportSecurity | None = None, options: ChannelOptions = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    """A plain grpc.aio channel (``options``) to a service's address setting, one replica, a list
    of them or a DNS name of several (``channel_target``). ``options`` win over the target's own."""
    target, needed = channel_target(address)
    return dial(target, security, list((dict(needed) | dict(options)).items()))


class ServiceClients:
    """Stubs for the other services, each on one long-lived channel (TLS when the settings say)."""

    def __init__(self, settings: PlatformSettings, credentials: ServiceCredentials) -> None:
        self._settings = settings
        self._credentials = credentials
        self._security = TransportSecurity.from_settings(settings)
        self._channels: dict[str, TracedChannel] = {}
        self._stubs: dict[tuple[str, type], Any] = {}

    def channel(self, service: str) -> TracedChannel:
        if service not in self._channels:
            self._channels[service] = open_channel(
                self._settings.address_of(service),
                self._credentials,
                self._settings.rpc_deadline_seconds,
                self._security,
                self._settings.grpc_keepalive_ms,
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
