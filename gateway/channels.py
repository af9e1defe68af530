"""One gRPC channel per backend, opened in the serving event loop and reused by every request.

The gateway adds the deadline, request id, credentials and W3C trace context to each
call itself (it has them at hand), so its channels carry no client interceptors:
kit.clients.open_channel's interceptors (OTel client span + call defaults) took a
call from about 190 to 360 us of CPU in a micro-benchmark, and the gateway's own
server span already is the caller's side of the hop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from gateway.descriptors import ApiMethod
from kit.clients import DEFAULT_KEEPALIVE_MS, channel_options, dial_service
from kit.tls import TransportSecurity


class Backends:
    """The channels to the services: TLS (with the gateway's certificate) when ``security`` is given."""

    def __init__(
        self,
        targets: Mapping[str, str],
        security: TransportSecurity | None = None,
        keepalive_ms: int = DEFAULT_KEEPALIVE_MS,
    ) -> None:
        self.targets = dict(targets)
        self._security = security
        self._options = channel_options(keepalive_ms)  # the services accept these pings (kit.server)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def open(self) -> None:
        for target in set(self.targets.values()):
            self.channel_to(target)

    def channel_for(self, service: str) -> grpc.aio.Channel:
        return self._channels[self.targets[service]]

    def channel_to(self, target: str) -> grpc.aio.Channel:
        """The channel to ``target`` (health checks share the backends' channels)."""
        if target not in self._channels:
            self._channels[target] = dial_service(target, self._security, self._options)
        return self._channels[target]

    def callable_for(self, method: ApiMethod) -> Any:
        """The multicallable of ``method``; requests go in already serialized (bytes)."""
        channel = self.channel_for(method.service)
        deserialize = method.response_class.FromString
        # Registered with the channel once (as generated stubs do): grpc then skips interning
        # the method path on every call.
        path, registered = method.grpc_path, {"_registered_method": True}
        if method.client_streaming and method.server_streaming:
            return channel.stream_stream(path, None, deserialize, **registered)
        if method.client_streaming:
            return channel.stream_unary(path, None, deserialize, **registered)
        if method.server_streaming:
            return channel.unary_stream(path, None, deserialize, **registered)
        return channel.unary_unary(path, None, deserialize, **registered)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
