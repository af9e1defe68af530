"""The OpenAPI 3.0 document of the gateway, derived from the same descriptors as its routes.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase names,
64-bit integers as decimal strings, enums by name, well-known types in their JSON
forms. Comments in the protos become descriptions; ``google.api.field_behavior``
REQUIRED becomes ``required``.

The document is written for the clients generated from it (docs/clients.md): each
operation's id, summary and extra headers come from its ``stylestudio.common.v1.openapi``
option; downloads declare the media types they send; the event stream is text whose
events' JSON schema is named; the headers every answer carries (X-Request-Id,
X-Trace-Id) and those of refusals (WWW-Authenticate, Retry-After) are described.
"""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from gateway.api import Api, ApiRoute, CallKind
from gateway.dashboard import PARTS
from gateway.descriptors import ApiDescriptors
from kit.interceptors import MAX_IDEMPOTENCY_KEY_LENGTH
from stylestudio.common.v1 import access_pb2

Schema = dict[str, Any]

ERROR_NAME = "Error"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_NAME}"}
_INT64_PATTERN = "^-?[0-9]+$"
_UINT64_PATTERN = "^[0-9]+$"
_INT32 = {"type": "integer", "format": "int32"}
_UINT32 = {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295}
_INT64 = {"type": "string", "format": "int64", "pattern": _INT64_PATTERN}
_UINT64 = {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN}
_SCALARS: dict[int, Schema] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"$ref": "#/components/schemas/Empty"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.Int64Value": _INT64,
    "google.protobuf.UInt64Value": _UINT64,
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}
ERROR_INFO_NAME = "ErrorInfo"
ERROR_INFO_SCHEMA: Schema = {
    "type": "object",
    "description": "What went wrong: the HTTP status, the gRPC status name, a reason and safe details.",
    "required": ["code", "status", "reason", "message", "details"],
    "properties": {
        "code": {"type": "integer", "description": "The HTTP status."},
        "status": {"type": "string", "description": "The gRPC status code name."},
        "reason": {
            "type": "string",
            "description": "UNAUTHORIZED, FORBIDDEN, NOT_FOUND, VALIDATION_ERROR, "
            "INSUFFICIENT_TOKENS, FILE_TOO_LARGE, INVALID_FILE_TYPE, RATE_LIMITED, "
            "QUOTA_EXCEEDED, FEATURE_NOT_IN_PLAN, PROCESSING_ERROR, PROVIDER_UNAVAILABLE, "
            "SERVICE_UNAVAILABLE, CONFLICT, INTERNAL",
        },
        "message": {"type": "string"},
        "details": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "Every error's body.",
    "required": ["error"],
    "properties": {"error": {"$ref": f"#/components/schemas/{ERROR_INFO_NAME}"}},
}
# google.protobuf.Empty, the answer of deletions and webhooks: one schema, not one per route.
EMPTY_NAME = "Empty"
EMPTY_SCHEMA: Schema = {"type": "object", "description": "Nothing.", "additionalProperties": False}
_OWN_SCHEMAS = {ERROR_NAME: ERROR_SCHEMA, ERROR_INFO_NAME: ERROR_INFO_SCHEMA, EMPTY_NAME: EMPTY_SCHEMA}
_ACCESS_NAMES = {value: name for name, value in access_pb2.Access.items()}
_SCHEMA_PREFIX = "#/components/schemas/"
_BINARY = {"type": "string", "format": "binary"}


def _header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-Id": _header(
        "The request's id: the client's own X-Request-Id (printable ASCII, at most 128 "
        "characters) or a new one. Quote it when reporting a problem."
    ),
    "X-Trace-Id": _header("The OpenTelemetry trace id of the request, 32 hexadecimal digits."),
    "Retry-After": _header("Seconds to wait before trying again.", {"type": "integer", "minimum": 0}),
    "ETag": _header("The representation's validator: send it back in If-None-Match."),
    "Cache-Control": _header("How long the answer may be reused, and by whom."),
    "Content-Disposition": _header("The file's name, for saving it."),
    "X-RateLimit-Limit": _header(
        "How many calls the limit allows per window (generations per hour).", {"type": "integer"}
    ),
    "X-RateLimit-Remaining": _header("How many calls are left in the window now.", {"type": "integer"}),
    "X-RateLimit-Reset": _header(
        "Seconds until the next call is allowed: 0 while some remain.", {"type": "integer", "minimum": 0}
    ),
    "WWW-Authenticate": _header(
        'The Bearer challenge (RFC 6750): `Bearer realm="stylestudio"`, with '
        '`error="invalid_token"` when a credential was sent and refused.'
    ),
}
_IDS = ("X-Request-Id", "X-Trace-Id")
_RATE_LIMIT = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
_CACHING = ("ETag", "Cache-Control")
PARAMETERS: dict[str, dict[str, Any]] = {
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Makes a retry safe: a second call with the same key and the same request "
        "gets the first call's answer and does nothing twice; the same key with another request "
        "is 409 CONFLICT. Printable ASCII.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "The ETag of the copy the client has: 304 while it is current.",
        "schema": {"type": "string"},
    },
}


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _error_content() -> dict[str, Any]:
    return {"application/json": {"schema": dict(ERROR_REF)}}


RESPONSES: dict[str, dict[str, Any]] = {
    "Error": {
        "description": "An error, in the body every error has",
        "headers": _headers(*_IDS),
        "content": _error_content(),
    },
    "Unauthorized": {
        "description": "No credential, or one that is not valid (expired, revoked, malformed)",
        "headers": _headers("WWW-Authenticate", *_IDS),
        "content": _error_content(),
    },
    "TooManyRequests": {
        "description": "A limit was reached: try again after Retry-After seconds",
        "headers": _headers("Retry-After", *_IDS),
        "content": _error_content(),
    },
    "RateLimited": {
        "description": "The limit the rate-limit headers count was reached",
        "headers": _headers("Retry-After", *_RATE_LIMIT, *_IDS),
        "content": _error_content(),
    },
    "Unavailable": {
        "description": "The platform is busy or a service it needs is down: try again after "
        "Retry-After seconds",
        "headers": _headers("Retry-After", *_IDS),
        "content": _error_content(),
    },
    "NotModified": {
        "description": "The client's copy (If-None-Match) is current",
        "headers": _headers(*_CACHING, *_IDS),
    },
}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _is_required(field: FieldDescriptor) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


class _Schemas:
    """components/schemas, filled on demand as operations refer to messages.

    Components are keyed by the message's full name while the document is built; ``named``
    then gives each its short name (``GetBalanceResponse``) where that is unique."""

    def __init__(self, descriptors: ApiDescriptors) -> None:
        self.comments = descriptors.comments
        self.components: dict[str, Schema] = dict(_OWN_SCHEMAS)
        self.own_names = set(_OWN_SCHEMAS)
        self.components[EMPTY_NAME] = {
            "type": "object",
            "description": "Nothing.",
            "additionalProperties": False,
        }

    def message(self, message_type: descriptor.Descriptor) -> Schema:
        if message_type.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message_type.full_name])
        name = message_type.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may refer to themselves
            self.components[name] = self.object(message_type, message_type.fields)
        return {"$ref": _SCHEMA_PREFIX + name}

    def own(self, name: str, schema: Schema) -> Schema:
        """A schema of the gateway's own (no proto message), under ``name``."""
        self.components[name] = schema
        self.own_names.add(name)
        return {"$ref": _SCHEMA_PREFIX + name}

    def object(self, message_type: descriptor.Descriptor, fields: list[FieldDescriptor]) -> Schema:
        schema: Schema = {
            "type": "object",
            "properties": {field.json_name: self.field(field) for field in fields},
            "additionalProperties": False,
        }
        required = [field.json_name for field in fields if _is_required(field)]
        if required:
            schema["required"] = required
        if message_type.full_name in self.comments:
            schema["description"] = self.comments[message_type.full_name]
        return schema

    def field(self, field: FieldDescriptor) -> Schema:
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            value = self.single(message_type.fields_by_name["value"])
            schema: Schema = {"type": "object", "additionalProperties": value}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        comment = self.comments.get(field.full_name)
        if comment and "$ref" not in schema:
            schema["description"] = comment
        return schema

    def single(self, field: FieldDescriptor) -> Schema:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [value.name for value in field.enum_type.values]}
        return dict(_SCALARS[field.type])

    def named(self, document: dict[str, Any]) -> dict[str, Any]:
        """The document with every message component under its short name: the name in its
        package, nested names joined (``Generation.Parameters`` -> ``GenerationParameters``),
        or, where two packages share it, prefixed with the package's domain (``CommonError``)."""
        own = self.own_names
        renames = _short_names([name for name in self.components if name not in own], own)
        refs = {_SCHEMA_PREFIX + old: _SCHEMA_PREFIX + new for old, new in renames.items()}
        document["components"]["schemas"] = {
            renames.get(name, name): schema for name, schema in self.components.items()
        }
        return _replace_refs(document, refs)


def _short_names(full_names: list[str], taken: set[str]) -> dict[str, str]:
    def split(full_name: str) -> tuple[list[str], list[str]]:
        parts = full_name.split(".")
        first_type = next((i for i, part in enumerate(parts) if part[:1].isupper()), len(parts) - 1)
        return parts[:first_type], parts[first_type:]

    short = {name: "".join(split(name)[1]) for name in full_names}
    counts: dict[str, int] = {}
    for name in [*short.values(), *taken]:
        counts[name] = counts.get(name, 0) + 1
    renames: dict[str, str] = {}
    for full_name, name in short.items():
        if counts[name] > 1:
            package, _ = split(full_name)
            domain = package[1] if len(package) > 2 and package[0] == "stylestudio" else "".join(package)
            name = domain[:1].upper() + domain[1:] + name
        if name in renames.values() or name in taken:
            name = full_name.replace(".", "_")  # still shared: the full name, which is unique
        renames[full_name] = name
    return renames


def _replace_refs(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: refs.get(item, item) if key == "$ref" else _replace_refs(item, refs)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_replace_refs(item, refs) for item in value]
    return value


def build_openapi(
    api: Api, title: str, version: str, dashboard: bool, admin_traces: bool = False
) -> dict[str, Any]:
    schemas = _Schemas(api.descriptors)
    paths: dict[str, dict[str, Any]] = {}
    for route in api.routes:
        paths.setdefault(route.label, {})[route.verb.lower()] = _operation(route, schemas)
    if dashboard:
        paths["/v1/dashboard"] = {"get": _dashboard_operation(api, schemas)}
    if admin_traces:
        paths["/v1/admin/traces/{id}"] = {"get": _trace_operation(schemas)}
    paths.update(_health_paths(schemas))
    document = {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        # Relative: the API is where this document was read from.
        "servers": [{"url": "/", "description": "The gateway that served this document"}],
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "responses": RESPONSES,
            "headers": HEADERS,
            "parameters": PARAMETERS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token (JWT) or an API key (sk_...).",
                }
            },
        },
    }
    return schemas.named(document)


def _health_paths(schemas: _Schemas) -> dict[str, Any]:
    """/healthz and /readyz (gateway/app.py), for load balancers and people alike."""
    alive = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}}
    readiness = {
        "type": "object",
        "properties": {
            "ready": {"type": "boolean"},
            "services": {
                "type": "object",
                "description": "Each service's health status (SERVING, NOT_SERVING, UNKNOWN ...).",
                "additionalProperties": {"type": "string"},
            },
        },
    }
    ids = _headers(*_IDS)
    alive_ref, readiness_ref = schemas.own("Liveness", alive), schemas.own("Readiness", readiness)
    live = {**_json_response("The gateway is up", alive_ref), "headers": ids}
    ready = {**_json_response("Every service is serving", readiness_ref), "headers": ids}
    not_ready = {**_json_response("Some service is not serving", readiness_ref), "headers": ids}
    return {
        "/healthz": {
            "get": {
                "operationId": "health.live",
                "tags": ["health"],
                "summary": "Check that the gateway is up",
                "security": [],
                "responses": {
                    "200": live,
                    "default": _response_ref("Error"),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "health.ready",
                "tags": ["health"],
                "summary": "Check that every service is serving",
                "security": [],
                "responses": {"200": ready, "503": not_ready, "default": _response_ref("Error")},
            }
        },
    }


def operation_names(route: ApiRoute) -> tuple[str, str]:
    """The operation id and the tag: the proto's ``openapi`` option, or, where it declares
    none, ``<service>.<method>`` in lowerCamelCase (``EchoService.GetThing`` -> ``echo.getThing``).
    A route's further bindings add their position (``echo.getThing2``)."""
    method = route.method
    declared = method.openapi.operation_id if method.openapi is not None else ""
    if declared:
        operation_id = declared
    else:
        service = method.service.rsplit(".", 1)[-1].removesuffix("Service") or "api"
        operation_id = f"{_lower_camel(service)}.{_lower_camel(method.name)}"
    index = method.bindings.index(route.binding)
    tag = operation_id.split(".", 1)[0]
    return (f"{operation_id}{index + 1}" if index else operation_id), tag


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _operation(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    method = route.method
    declared = method.openapi
    comment = schemas.comments.get(method.full_name, "")
    if declared is not None and declared.description:
        comment = declared.description  # the comment in HTTP's terms
    operation_id, tag = operation_names(route)
    summary = declared.summary if declared is not None and declared.summary else ""
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary or (_first_sentence(comment) if comment else method.name),
        "x-grpc-method": method.full_name,
        "x-access": _ACCESS_NAMES.get(method.access, "ACCESS_UNSPECIFIED"),
        "security": [] if method.is_public else [{"bearerAuth": []}],
        "parameters": _parameters(route, schemas),
        "responses": _responses(route, schemas),
    }
    if method.session_only:
        operation["x-session-only"] = True
        refused = "Needs an access token: API keys are refused (403)."
        comment = f"{comment}\n\n{refused}" if comment else refused
    if comment:
        operation["description"] = comment
    body = _request_body(route, schemas)
    if body is not None:
        operation["requestBody"] = body
    return operation


def _first_sentence(comment: str) -> str:
    text = " ".join(comment.split())
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def _parameters(route: ApiRoute, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {
            "name": "_".join(path),
            "x-field-path": ".".join(path),
            "in": "path",
            "required": True,
            "schema": schemas.single(field) if not field.is_repeated else {"type": "string"},
        }
        for path, field in route.mapping.path_fields.items()
    ]
    seen: set[int] = set()
    for name, query_field in route.mapping.query_fields.items():
        if id(query_field) in seen:
            continue  # the same field under its snake_case name: document the JSON name only
        seen.add(id(query_field))
        schema = schemas.field(query_field.field)
        required = _is_required(query_field.field)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
        if query_field.repeated:
            parameter["style"], parameter["explode"] = "form", True
        parameters.append(parameter)
    declared = route.method.openapi
    if declared is not None and declared.idempotency_key:
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    if route.kind is CallKind.DOWNLOAD or route.is_catalogue:
        parameters.append({"$ref": "#/components/parameters/IfNoneMatch"})
    return parameters


def _request_body(route: ApiRoute, schemas: _Schemas) -> dict[str, Any] | None:
    if route.kind is CallKind.UPLOAD and route.upload is not None:
        return _upload_body(route, schemas)
    mapping = route.mapping
    if not mapping.has_body:
        return None
    if mapping.raw_body:
        return {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    if mapping.body_field is not None:
        schema = schemas.field(mapping.body_field)
    else:
        request = route.method.descriptor.input_type
        in_path = {path[0] for path in mapping.path_fields}
        if in_path:  # body "*" is every field the path does not bind
            rest = [field for field in request.fields if field.name not in in_path]
            if not rest:  # nothing left to send: the body may be left out (or be {})
                return {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
            schema = schemas.object(request, rest)
        else:
            schema = schemas.message(request)
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _upload_body(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    """multipart/form-data: the request's form fields and ``file``. The file part's own name
    and type fill ``filename`` and ``contentType`` when the form leaves them out."""
    assert route.upload is not None
    upload = route.upload
    from_file_part = {upload.filename_field, upload.content_type_field}
    properties: dict[str, Any] = {}
    required = []
    seen: set[int] = set()
    for name, form_field in upload.fields.items():
        if id(form_field) in seen or "." in name:
            continue
        seen.add(id(form_field))
        properties[name] = schemas.field(form_field.field)
        if _is_required(form_field.field) and form_field.field.name not in from_file_part:
            required.append(name)
    properties["file"] = dict(_BINARY)
    schema = {"type": "object", "properties": properties, "required": [*required, "file"]}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _responses(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    rate_limited = route.method.rate_limit_headers
    success = _success_response(route, schemas)
    success["headers"] = _headers(
        *(_CACHING if route.is_catalogue else ()),
        *(_RATE_LIMIT if rate_limited else ()),
        *_IDS,
    )
    responses: dict[str, Any] = {"200": success}
    if route.kind is CallKind.DOWNLOAD:
        success["headers"].update(_headers(*_CACHING, "Content-Disposition"))
    if route.kind is CallKind.DOWNLOAD or route.is_catalogue:
        responses["304"] = _response_ref("NotModified")
    if not route.method.is_public:
        responses["401"] = _response_ref("Unauthorized")
    responses["429"] = _response_ref("RateLimited" if rate_limited else "TooManyRequests")
    responses["503"] = _response_ref("Unavailable")
    responses["default"] = _response_ref("Error")
    return responses


def _success_response(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    if route.kind in (CallKind.DOWNLOAD, CallKind.RAW_RESPONSE):
        content = {media_type: {"schema": dict(_BINARY)} for media_type in route.media_types}
        return {"description": "The content, with its own Content-Type", "content": content}
    if route.kind is CallKind.EVENTS:
        return _event_stream_response(route, schemas)
    output = route.method.descriptor.output_type
    if route.mapping.response_body:
        schema = schemas.field(output.fields_by_name[route.mapping.response_body])
    else:
        schema = schemas.message(output)
    return _json_response(output.name, schema)


def _event_stream_response(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    """Server-sent events, described as what they are on the wire: text. Each event's JSON
    has its schema in components (named here and in ``x-event-schemas``), so a client parses
    the ``data:`` lines with the model generated for it."""
    output = route.method.descriptor.output_type
    item = schemas.message(output)
    description = (
        "Server-sent events, until the stream ends:\n\n"
        f"- `data: <{output.name}>`: one event per message, as JSON "
        "(its schema: `x-event-schemas.message`);\n"
        "- `event: error` then `data: <Error>`: the stream failed and ends "
        "(its schema: `x-event-schemas.error`);\n"
        "- `: keep-alive`: a comment line on a quiet stream, to be ignored.\n\n"
        "Events are separated by a blank line. The stream ends after the last message."
    )
    text = {
        "schema": {"type": "string", "description": "The event stream's text"},
        "x-event-schemas": {"message": item, "error": dict(ERROR_REF)},
    }
    return {"description": description, "content": {"text/event-stream": text}}


def _json_response(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _dashboard_operation(api: Api, schemas: _Schemas) -> dict[str, Any]:
    document: dict[str, Any] = {"billing": {"type": "object", "properties": {}}}
    for part in PARTS:
        method = api.descriptors.find_method(part.rpc)
        assert method is not None
        output = method.descriptor.output_type
        schema = schemas.field(output.fields_by_name[part.pick]) if part.pick else schemas.message(output)
        holder, _, key = part.name.rpartition(".")
        nullable = {"allOf": [schema], "nullable": True} if "$ref" in schema else {**schema, "nullable": True}
        if holder:
            document[holder]["properties"][key] = nullable
        else:
            document[key] = nullable
    document["errors"] = {"type": "object", "additionalProperties": ERROR_SCHEMA["properties"]["error"]}
    schema = schemas.own("Dashboard", {"type": "object", "properties": document})
    success = _json_response("Dashboard", schema)
    success["headers"] = _headers(*_IDS)
    return {
        "operationId": "dashboard.get",
        "tags": ["dashboard"],
        "summary": "Get your dashboard: profile, balance, files and recent generations in one call",
        "description": "Gathered from every service concurrently. A part that fails is null and "
        "its error is under `errors`.",
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": success,
            "401": _response_ref("Unauthorized"),
            "503": _response_ref("Unavailable"),
            "default": _response_ref("Error"),
        },
    }


def _trace_operation(schemas: _Schemas) -> dict[str, Any]:
    """GET /v1/admin/traces/{id} (gateway/traces.py): what `stylestudio trace --json` prints."""
    span = {"type": "object", "additionalProperties": True}
    schema = {
        "type": "object",
        "properties": {"trace_id": {"type": "string"}, "spans": {"type": "array", "items": span}},
    }
    success = _json_response("Trace", schemas.own("Trace", schema))
    success["headers"] = _headers(*_IDS)
    return {
        "operationId": "admin.getTrace",
        "tags": ["admin"],
        "summary": "Get a trace by generation id, trace id or request id (admins)",
        "description": "From the local span store. 503 where the gateway keeps none (read Jaeger).",
        "x-access": "ACCESS_ADMIN",
        "security": [{"bearerAuth": []}],
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": success,
            "401": _response_ref("Unauthorized"),
            "503": _response_ref("Unavailable"),
            "default": _response_ref("Error"),
        },
    }
