"""The API as the protos declare it: services, their HTTP bindings, access levels and comments.

The gateway is built from a descriptor set (``protoc --descriptor_set_out
--include_imports --include_source_info``), never from the generated Python
modules, so an RPC added to a proto is served after regenerating the descriptor set
alone, and tests can build a gateway over protos of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory

from stylestudio.common.v1 import access_pb2, openapi_pb2

HTTP_BODY = "google.api.HttpBody"


@dataclass(frozen=True, slots=True)
class HttpBinding:
    """One ``google.api.http`` rule (or one of its additional_bindings)."""

    verb: str
    template: str
    body: str
    response_body: str


@dataclass(frozen=True, slots=True)
class ApiMethod:
    """An RPC the gateway exposes, with everything a request needs resolved once."""

    service: str
    name: str
    grpc_path: str
    descriptor: descriptor.MethodDescriptor
    request_class: type[message.Message]
    response_class: type[message.Message]
    client_streaming: bool
    server_streaming: bool
    access: int
    bindings: tuple[HttpBinding, ...]
    # Refuses API keys: only an access token of a signed-in session may call it.
    session_only: bool = False
    # Its answers carry the caller's X-RateLimit-* (kit/ratelimits.py), which only its service knows.
    rate_limit_headers: bool = False
    # How the route reads in /openapi.json (operation id, summary, headers); None when the
    # proto declares nothing (gateway/openapi.py derives them).
    openapi: openapi_pb2.OpenApiOperation | None = dataclasses.field(default=None, compare=False)

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    @property
    def is_public(self) -> bool:
        return self.access == access_pb2.ACCESS_PUBLIC

    @property
    def returns_http_body(self) -> bool:
        return self.descriptor.output_type.full_name == HTTP_BODY


class ApiDescriptors:
    """A private descriptor pool holding the contract, its exposed methods and its comments."""

    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.comments: dict[str, str] = {}
        for file in _dependency_order(files):
            self.pool.Add(file)
        for file in files:
            self.comments.update(_comments_of(file))
        self.methods: list[ApiMethod] = [method for file in files for method in self._exposed_methods(file)]

    @classmethod
    def from_file(cls, path: str | Path) -> ApiDescriptors:
        return cls.from_bytes(Path(path).read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> ApiDescriptors:
        return cls(list(descriptor_pb2.FileDescriptorSet.FromString(data).file))

    def message_class(self, message_descriptor: descriptor.Descriptor) -> type[message.Message]:
        return message_factory.GetMessageClass(message_descriptor)

    def find_method(self, full_name: str) -> ApiMethod | None:
        return next((method for method in self.methods if method.full_name == full_name), None)

    def _exposed_methods(self, file: descriptor_pb2.FileDescriptorProto) -> Iterable[ApiMethod]:
        package = f"{file.package}." if file.package else ""
        for service_proto in file.service:
            service = self.pool.FindServiceByName(package + service_proto.name)
            for method_proto in service_proto.method:
                options = method_proto.options
                if not options.HasExtension(annotations_pb2.http):
                    continue  # internal RPCs carry no HTTP binding, so they are never exposed
                method = service.methods_by_name[method_proto.name]
                yield ApiMethod(
                    service=service.full_name,
                    name=method.name,
                    grpc_path=f"/{service.full_name}/{method.name}",
                    descriptor=method,
                    request_class=self.message_class(method.input_type),
                    response_class=self.message_class(method.output_type),
                    client_streaming=method_proto.client_streaming,
                    server_streaming=method_proto.server_streaming,
                    access=options.Extensions[access_pb2.access],
                    bindings=tuple(_bindings(options.Extensions[annotations_pb2.http])),
                    session_only=options.Extensions[access_pb2.session_only],
                    rate_limit_headers=options.Extensions[access_pb2.rate_limit_headers],
                    openapi=(
                        options.Extensions[openapi_pb2.openapi]
                        if options.HasExtension(openapi_pb2.openapi)
                        else None
                    ),
                )


def _bindings(rule: http_pb2.HttpRule) -> Iterable[HttpBinding]:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        yield HttpBinding(rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body)
    elif pattern is not None:
        yield HttpBinding(pattern.upper(), getattr(rule, pattern), rule.body, rule.response_body)
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


def _dependency_order(
    files: Sequence[descriptor_pb2.FileDescriptorProto],
) -> list[descriptor_pb2.FileDescriptorProto]:
    """A pool needs every file's imports added before it; protoc's order usually is, but not always."""
    by_name = {file.name: file for file in files}
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        seen.add(name)
        for dependency in by_name[name].dependency:
            visit(dependency)
        ordered.append(by_name[name])

    for file in files:
        visit(file.name)
    return ordered


def _comments_of(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """Leading comments by full name (messages, fields, enums, values, services, methods)."""
    by_path = {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
        if location.leading_comments
    }
    comments: dict[str, str] = {}
    package = f"{file.package}." if file.package else ""

    def add(path: tuple[int, ...], full_name: str) -> None:
        if path in by_path:
            comments[full_name] = by_path[path]

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        add(path, scope + enum.name)
        for index, value in enumerate(enum.value):
            add((*path, 2, index), f"{scope}{enum.name}.{value.name}")

    def walk_message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        name = scope + msg.name
        add(path, name)
        for index, field in enumerate(msg.field):
            add((*path, 2, index), f"{name}.{field.name}")
        for index, nested in enumerate(msg.nested_type):
            walk_message(nested, (*path, 3, index), name + ".")
        for index, enum in enumerate(msg.enum_type):
            walk_enum(enum, (*path, 4, index), name + ".")

    for index, msg in enumerate(file.message_type):
        walk_message(msg, (4, index), package)
    for index, enum in enumerate(file.enum_type):
        walk_enum(enum, (5, index), package)
    for index, service in enumerate(file.service):
        add((6, index), package + service.name)
        for method_index, method in enumerate(service.method):
            add((6, index, 2, method_index), f"{package}{service.name}.{method.name}")
    return comments
