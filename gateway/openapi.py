"""The OpenAPI 3.0 document of the gateway, derived from the same descriptors as its routes.

Schemas follow the proto3 JSON mapping the gateway speaks: lowerCamelCase names,
64-bit integers as decimal strings, enums by name, well-known types in their JSON
forms. Comments in the protos become descriptions.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor
from google.protobuf.descriptor import FieldDescriptor

from gateway.api import Api, ApiRoute, CallKind
from gateway.dashboard import PARTS
from gateway.descriptors import ApiDescriptors
from stylestudio.common.v1 import access_pb2

Schema = dict[str, Any]

ERROR_REF = {"$ref": "#/components/schemas/Error"}
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
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
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
ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "Every error: the HTTP status, the gRPC status name, a reason and safe details.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
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
    },
}
_ACCESS_NAMES = {value: name for name, value in access_pb2.Access.items()}


class _Schemas:
    """components/schemas, filled on demand as operations refer to messages."""

    def __init__(self, descriptors: ApiDescriptors) -> None:
        self.comments = descriptors.comments
        self.components: dict[str, Schema] = {"Error": ERROR_SCHEMA}

    def message(self, message_type: descriptor.Descriptor) -> Schema:
        if message_type.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message_type.full_name])
        name = message_type.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may refer to themselves
            properties = {field.json_name: self.field(field) for field in message_type.fields}
            schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
            if name in self.comments:
                schema["description"] = self.comments[name]
            self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

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
        paths["/v1/admin/traces/{id}"] = {"get": _trace_operation()}
    for path, summary in (("/healthz", "The gateway is up"), ("/readyz", "Every service is serving")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "tags": ["operations"],
                "summary": summary,
                "security": [],
                "responses": {
                    "200": {
                        "description": summary,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "default": _error_response(),
                },
            }
        }
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token (JWT) or an API key (sk_...).",
                }
            },
        },
    }


def _operation(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    method = route.method
    comment = schemas.comments.get(method.full_name, "")
    index = method.bindings.index(route.binding)
    operation: dict[str, Any] = {
        "operationId": f"{method.service.rsplit('.', 1)[-1]}_{method.name}" + (f"_{index}" if index else ""),
        "tags": [method.service.rsplit(".", 1)[-1]],
        "summary": comment.split("\n", 1)[0] if comment else method.name,
        "x-grpc-method": method.full_name,
        "x-access": _ACCESS_NAMES.get(method.access, "ACCESS_UNSPECIFIED"),
        "security": [] if method.is_public else [{"bearerAuth": []}],
        "parameters": _parameters(route, schemas),
        "responses": {"200": _success_response(route, schemas), "default": _error_response()},
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


def _parameters(route: ApiRoute, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters = [
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
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if query_field.repeated:
            parameter["style"], parameter["explode"] = "form", True
        parameters.append(parameter)
    return parameters


def _request_body(route: ApiRoute, schemas: _Schemas) -> dict[str, Any] | None:
    if route.kind is CallKind.UPLOAD and route.upload is not None:
        properties: dict[str, Any] = {}
        seen: set[int] = set()
        for name, form_field in route.upload.fields.items():
            if id(form_field) not in seen and "." not in name:
                seen.add(id(form_field))
                properties[name] = schemas.field(form_field.field)
        properties["file"] = {"type": "string", "format": "binary"}
        schema = {"type": "object", "properties": properties, "required": ["file"]}
        return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    mapping = route.mapping
    if not mapping.has_body:
        return None
    if mapping.raw_body:
        return {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    if mapping.body_field is None:
        schema = schemas.message(route.method.descriptor.input_type)
    else:
        schema = schemas.field(mapping.body_field)
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _success_response(route: ApiRoute, schemas: _Schemas) -> dict[str, Any]:
    content: dict[str, Any]
    if route.kind in (CallKind.DOWNLOAD, CallKind.RAW_RESPONSE):
        content = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
        return {"description": "The content, with its own Content-Type", "content": content}
    if route.kind is CallKind.EVENTS:
        item = schemas.message(route.method.descriptor.output_type)
        event: Schema = {
            "type": "object",
            "properties": {
                "event": {"type": "string", "enum": ["message", "error"]},
                "data": {"type": "string", "description": "A message in proto3 JSON, or an error body"},
            },
        }
        content = {"text/event-stream": {"schema": event, "x-message-schema": item}}
        return {
            "description": "One `data:` event per message (proto3 JSON); ends with the stream",
            "content": content,
        }
    output = route.method.descriptor.output_type
    if route.mapping.response_body:
        schema = schemas.field(output.fields_by_name[route.mapping.response_body])
    else:
        schema = schemas.message(output)
    return {"description": output.name, "content": {"application/json": {"schema": schema}}}


def _error_response() -> dict[str, Any]:
    return {"description": "An error", "content": {"application/json": {"schema": ERROR_REF}}}


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
    schema = {"type": "object", "properties": document}
    return {
        "operationId": "Gateway_GetDashboard",
        "tags": ["dashboard"],
        "summary": "The caller's dashboard, gathered from every service concurrently",
        "description": "A part that fails is null and its error is under `errors`.",
        "security": [{"bearerAuth": []}],
        "responses": {
            "200": {"description": "Dashboard", "content": {"application/json": {"schema": schema}}},
            "default": _error_response(),
        },
    }


def _trace_operation() -> dict[str, Any]:
    """GET /v1/admin/traces/{id} (gateway/traces.py): what `stylestudio trace --json` prints."""
    span = {"type": "object", "additionalProperties": True}
    schema = {
        "type": "object",
        "properties": {"trace_id": {"type": "string"}, "spans": {"type": "array", "items": span}},
    }
    return {
        "operationId": "Gateway_GetTrace",
        "tags": ["operations"],
        "summary": "A trace from the local span store, by generation id, trace id or request id",
        "description": "Admins only. 503 where the gateway keeps no local span store (read Jaeger).",
        "x-access": "ACCESS_ADMIN",
        "security": [{"bearerAuth": []}],
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "Trace", "content": {"application/json": {"schema": schema}}},
            "default": _error_response(),
        },
    }
