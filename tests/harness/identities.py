"""Service identities in tests: every identity's key, and channels that call as the right service.

A test that calls an INTERNAL RPC does so as one of the callers the protos declare for it
(``declared_caller``), exactly as that service would; tests of the rule itself mint each
identity's credential explicitly (``Keyring.credentials``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor

import stylestudio
from kit.access import MethodAccess, method_access
from kit.auth import ServiceCredentials
from kit.clients import CHANNEL_OPTIONS, channel_target
from kit.service_keys import IDENTITIES, PublicKeySet, SigningIdentity, development_key, public_keys_json
from kit.tls import TransportSecurity
from stylestudio.common.v1 import access_pb2


@cache
def platform_services() -> tuple[descriptor.ServiceDescriptor, ...]:
    """Every gRPC service of the platform, found by walking the generated code (no list to forget)."""
    found = []
    for module_info in pkgutil.walk_packages(stylestudio.__path__, "stylestudio."):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(module_info.name)
            found.extend(module.DESCRIPTOR.services_by_name.values())
    return tuple(sorted(found, key=lambda service: service.full_name))


@cache
def declared_access() -> Mapping[str, MethodAccess]:
    """``/package.Service/Method`` -> what its options declare (kit.access reads the same)."""
    return method_access(platform_services())


def internal_methods() -> dict[str, MethodAccess]:
    return {m: a for m, a in declared_access().items() if a.level == access_pb2.ACCESS_INTERNAL}


class Keyring:
    """One private key per identity, and the public key set that accepts them all."""

    def __init__(self, keys: Mapping[str, SigningIdentity]) -> None:
        self.keys = dict(keys)
        self.public_keys = PublicKeySet.of(self.keys.values())
        self._credentials: dict[str, ServiceCredentials] = {}

    @classmethod
    def development(cls) -> Keyring:
        """The development keys: what an in-process service with no key settings accepts."""
        return cls({identity: development_key(identity) for identity in IDENTITIES})

    def public_keys_json(self) -> str:
        return public_keys_json({identity: [key.public_key] for identity, key in self.keys.items()})

    def credentials(self, identity: str) -> ServiceCredentials:
        if identity not in self._credentials:
            self._credentials[identity] = ServiceCredentials(self.keys[identity], self.public_keys)
        return self._credentials[identity]

    def channel(
        self, target: str, deadline_seconds: float, security: TransportSecurity | None = None
    ) -> grpc.aio.Channel:
        """A channel to ``target`` (over TLS when ``security`` is given) whose INTERNAL calls
        present a declared caller's credential."""
        interceptors = declared_caller(self.credentials, deadline_seconds)
        target, extra = channel_target(target)  # one replica or several
        options = [*CHANNEL_OPTIONS, *extra]
        if security is None:
            return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
        credentials = security.channel_credentials()
        return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


class _DeclaredCaller:
    """Presents, on each INTERNAL call that carries no Authorization of its own, the credential
    of the first caller the protos declare for that method; other calls go out unchanged."""

    def __init__(self, credentials: Callable[[str], ServiceCredentials], deadline_seconds: float) -> None:
        self._credentials = credentials
        self._deadline = deadline_seconds

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        access = declared_access().get(method)
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if access is not None and access.callers and "authorization" not in metadata:
            token = self._credentials(sorted(access.callers)[0]).token()
            metadata.add("authorization", f"Bearer {token}")
        timeout = self._deadline if details.timeout is None else details.timeout
        return details._replace(metadata=metadata, timeout=timeout)  # type: ignore[attr-defined,no-any-return]


# grpc.aio files an interceptor under one call type only: one class per type.
class _UnaryUnary(_DeclaredCaller, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_DeclaredCaller, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_DeclaredCaller, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_DeclaredCaller, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def declared_caller(
    credentials: Callable[[str], ServiceCredentials], deadline_seconds: float
) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that make a channel call each INTERNAL RPC as a declared caller, with
    a default deadline (a plain grpc.aio channel: kit.clients' TracedChannel takes no interceptors)."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    return [kind(credentials, deadline_seconds) for kind in kinds]
