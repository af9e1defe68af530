"""HTTP request -> request message, response message -> JSON, per google.api.http and proto3 JSON.

Each route gets a ``RequestMapping`` built once at start-up: which fields the path
binds, which the body fills (``*``, one field, or a raw ``google.api.HttpBody``),
and the query parameters every other field answers to (lowerCamelCase or
snake_case, dotted for nested fields). A request then costs one JSON parse and
one ``ParseDict``; a request with no parameters and no body costs none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from google.protobuf import descriptor, json_format, message
from google.protobuf.descriptor import FieldDescriptor

from gateway.descriptors import HTTP_BODY, ApiMethod, HttpBinding
from gateway.errors import bad_request
from gateway.routes import PathParams, PathTemplate, TemplateError
from kit import validation
from kit.errors import ValidationError, excerpt

# Well-known types written as one JSON string or number, so they can be a query parameter.
SCALAR_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)
_MAX_QUERY_DEPTH = 3
_MAX_PARSE_ERROR_CHARS = 120
_FIELD_IN_ERROR = re.compile(r'(?:Failed to parse (\S+) field|has no field named "([^"]+)")')


def to_json(response: message.Message) -> dict[str, object]:
    """The proto3 JSON mapping, with every non-optional field present (``nextPageToken: ""``)."""
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True)


@dataclass(frozen=True, slots=True)
class QueryField:
    path: tuple[str, ...]
    field: FieldDescriptor

    @property
    def repeated(self) -> bool:
        return bool(self.field.is_repeated)


class RequestMapping:
    """How one HTTP binding of one RPC fills the request message."""

    def __init__(self, method: ApiMethod, binding: HttpBinding, template: PathTemplate) -> None:
        self.method = method
        self.request_class = method.request_class
        request = method.descriptor.input_type
        validation.prepare(request)
        self.path_fields = {
            variable.field_path: _field_at(request, variable.field_path, binding.template)
            for variable in template.variables
        }
        self.body = binding.body
        self.body_field: FieldDescriptor | None = None
        self.raw_body = False
        if binding.body not in ("", "*"):
            self.body_field = _field_at(request, tuple(binding.body.split(".")), binding.template)
            message_type = self.body_field.message_type
            self.raw_body = message_type is not None and message_type.full_name == HTTP_BODY
        self.query_fields: dict[str, QueryField] = {}
        if binding.body != "*":
            bound = {path[0] for path in self.path_fields}
            if self.body_field is not None:
                bound.add(self.body_field.name)
            self.query_fields = string_fields(request, bound)
        self.response_body = binding.response_body
        self.encode_response: Callable[[message.Message], bytes] = (
            self._encode_response_field if binding.response_body else _encode_response
        )

    @property
    def has_body(self) -> bool:
        return self.body != ""

    def build(self, params: PathParams, query: bytes, body: bytes, content_type: str) -> message.Message:
        """The request message; raises ``ApiError`` (400) naming the field for bad input."""
        request = self.request_class()
        if self.body:
            self._apply_body(request, body, content_type)
        if query:
            self._apply_query(request, query)
        if params:
            values: dict[str, object] = {}
            for path, raw in params:
                _put(values, path, _scalar(self.path_fields[path], raw, ".".join(path)), False)
            _parse_into(values, request)
        check_request(request)
        return request

    def _apply_query(self, request: message.Message, query: bytes) -> None:
        try:
            pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as error:
            raise bad_request("The query string is not UTF-8") from error
        parse_strings(self.query_fields, pairs, request)

    def _apply_body(self, request: message.Message, body: bytes, content_type: str) -> None:
        if self.raw_body:
            assert self.body_field is not None
            http_body = getattr(request, self.body_field.name)
            http_body.content_type = content_type or "application/octet-stream"
            http_body.data = body
            return
        if not body.strip():
            value: object = {}
        else:
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError as error:
                raise bad_request(f"Malformed JSON body: {error}") from error
        if self.body_field is None:
            if not isinstance(value, dict):
                raise bad_request("The body must be a JSON object")
            _parse_into(value, request)
            return
        values: dict[str, object] = {}
        _put(values, tuple(self.body.split(".")), value, False)
        _parse_into(values, request)

    def _encode_response_field(self, response: message.Message) -> bytes:
        document = to_json(response)
        return orjson.dumps(document.get(_json_name(response.DESCRIPTOR, self.response_body)))


def check_request(request: message.Message) -> None:
    """The services' own checks of a request (kit.validation: control characters, enum
    numbers, integer bounds, nesting), answered as a 400 before any call is made."""
    try:
        validation.check(request)
    except ValidationError as error:
        raise bad_request(error.message, error.details.get("field")) from None


def string_fields(
    message_type: descriptor.Descriptor, exclude: set[str], prefix: tuple[str, ...] = ()
) -> dict[str, QueryField]:
    """The fields a ``name=value`` string may set, by lowerCamelCase and snake_case (dotted) name."""
    fields: dict[str, QueryField] = {}
    for (json_path, proto_path), field in _query_fields(message_type, exclude):
        located = QueryField((*prefix, *json_path), field)
        fields.setdefault(".".join(json_path), located)
        fields.setdefault(".".join(proto_path), located)
    return fields


def parse_strings(
    fields: dict[str, QueryField], pairs: list[tuple[str, str]], request: message.Message
) -> None:
    """Sets query parameters (or form fields) on ``request``; 400 naming an unknown or bad one."""
    values: dict[str, object] = {}
    for name, raw in pairs:
        query_field = fields.get(name)
        if query_field is None:
            raise bad_request(f"Unknown parameter {excerpt(name)!r}", name)
        _put(values, query_field.path, _scalar(query_field.field, raw, name), query_field.repeated)
    _parse_into(values, request)


def _encode_response(response: message.Message) -> bytes:
    return orjson.dumps(to_json(response))


def _json_name(message_descriptor: descriptor.Descriptor, field_path: str) -> str:
    field = message_descriptor.fields_by_name.get(field_path)
    return field.json_name if field is not None else field_path


def _parse_into(values: dict[str, object], request: message.Message) -> None:
    try:
        json_format.ParseDict(values, request)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as error:
        text = str(error).split("\n", 1)[0]
        found = _FIELD_IN_ERROR.search(text)
        text = excerpt(text, _MAX_PARSE_ERROR_CHARS)  # protobuf's text quotes the value
        raise bad_request(text, (found.group(1) or found.group(2)) if found else None) from error


def _put(values: dict[str, object], path: tuple[str, ...], value: object, repeated: bool) -> None:
    node = values
    for name in path[:-1]:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise bad_request(f"{'.'.join(path)!r} conflicts with another parameter", ".".join(path))
        node = child
    if repeated:
        existing = node.setdefault(path[-1], [])
        if not isinstance(existing, list):
            raise bad_request(f"{'.'.join(path)!r} is given twice", ".".join(path))
        existing.append(value)
    elif path[-1] in node:
        raise bad_request(f"{'.'.join(path)!r} is given twice", ".".join(path))
    else:
        node[path[-1]] = value


def _scalar(field: FieldDescriptor, raw: str, name: str) -> object:
    """A string from a path, query or form turned into the JSON value ParseDict expects."""
    wrapped = field.message_type.full_name if field.message_type is not None else ""
    if field.type == FieldDescriptor.TYPE_BOOL or wrapped == "google.protobuf.BoolValue":
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise bad_request(f"{excerpt(name)!r} must be true or false", name)
    if field.type == FieldDescriptor.TYPE_ENUM and raw.lstrip("-").isdigit():
        return int(raw)
    return raw


def _field_at(message_type: descriptor.Descriptor, path: tuple[str, ...], template: str) -> FieldDescriptor:
    current: descriptor.Descriptor | None = message_type
    field: FieldDescriptor | None = None
    for name in path:
        if current is None or name not in current.fields_by_name:
            raise TemplateError(f"{template!r}: {message_type.full_name} has no field {'.'.join(path)!r}")
        field = current.fields_by_name[name]
        current = field.message_type
    assert field is not None
    return field


def _query_fields(
    message_type: descriptor.Descriptor, bound: set[str]
) -> Iterator[tuple[tuple[tuple[str, ...], tuple[str, ...]], FieldDescriptor]]:
    """Every field a query parameter may set: ((json path, proto path), field)."""

    def walk(
        current: descriptor.Descriptor, json_path: tuple[str, ...], proto_path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[tuple[str, ...], tuple[str, ...]], FieldDescriptor]]:
        for field in current.fields:
            if not proto_path and field.name in bound:
                continue
            names = ((*json_path, field.json_name), (*proto_path, field.name))
            nested = field.message_type
            if nested is None or nested.full_name in SCALAR_MESSAGES:
                yield names, field
            elif (
                not field.is_repeated
                and len(proto_path) + 1 < _MAX_QUERY_DEPTH
                and not nested.full_name.startswith("google.protobuf.")
            ):
                yield from walk(nested, names[0], names[1])

    yield from walk(message_type, (), ())
