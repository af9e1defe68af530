"""The API the gateway serves: every ``google.api.http`` binding of the descriptors, as routes.

Nothing here names a route: adding an annotated RPC to a proto (and regenerating the
descriptor set) adds its route, its OpenAPI operation and its metrics label.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.descriptors import ApiDescriptors, ApiMethod, HttpBinding
from gateway.routes import PathTemplate, RouteTable, parse_template
from gateway.streaming import OCTET_STREAM, UploadMapping
from gateway.transcoding import RequestMapping

log = logging.getLogger("stylestudio.gateway")


class CallKind(enum.Enum):
    UNARY = "unary"  # JSON in, JSON out
    RAW_RESPONSE = "raw_response"  # unary returning google.api.HttpBody: its bytes and content type
    EVENTS = "events"  # server-streaming: text/event-stream
    DOWNLOAD = "download"  # server-streaming google.api.HttpBody: streamed bytes
    UPLOAD = "upload"  # client-streaming: multipart/form-data


@dataclass(slots=True)
class ApiRoute:
    verb: str
    template: PathTemplate
    method: ApiMethod
    binding: HttpBinding
    mapping: RequestMapping
    kind: CallKind
    upload: UploadMapping | None
    # the metrics label and span name: the template, never the raw path
    label: str
    # the method's multicallable, set once the channels are open
    call: Any = field(default=None)

    @property
    def media_types(self) -> tuple[str, ...]:
        """What content a download may be served as: the types its proto declares, then
        octet-stream, which content of any other type is served as (gateway/streaming.py)."""
        declared = self.method.openapi.media_types if self.method.openapi is not None else ()
        return (*(t for t in declared if t != OCTET_STREAM), OCTET_STREAM)

    @property
    def is_catalogue(self) -> bool:
        """A PUBLIC GET that takes nothing (styles, models, packages, the JWKS): the same answer
        for everyone until a deploy, so browsers and CDNs may cache it (gateway/app.py)."""
        return (
            self.kind is CallKind.UNARY
            and self.verb == "GET"
            and self.method.is_public
            and not self.method.descriptor.input_type.fields
        )


def kind_of(method: ApiMethod) -> CallKind | None:
    if method.client_streaming and method.server_streaming:
        return None  # bidirectional streams have no HTTP/1.1 form here
    if method.client_streaming:
        return CallKind.UPLOAD
    if method.server_streaming:
        return CallKind.DOWNLOAD if method.returns_http_body else CallKind.EVENTS
    return CallKind.RAW_RESPONSE if method.returns_http_body else CallKind.UNARY


class Api:
    def __init__(self, descriptors: ApiDescriptors) -> None:
        self.descriptors = descriptors
        self.routes: list[ApiRoute] = []
        self.table: RouteTable[ApiRoute] = RouteTable()
        for method in descriptors.methods:
            kind = kind_of(method)
            if kind is None:
                log.warning("not exposing bidirectional stream", extra={"rpc": method.full_name})
                continue
            upload = None
            if kind is CallKind.UPLOAD:
                upload = UploadMapping(method.descriptor.input_type, method.request_class)
            for binding in method.bindings:
                template = parse_template(binding.template)
                route = ApiRoute(
                    verb=binding.verb,
                    template=template,
                    method=method,
                    binding=binding,
                    mapping=RequestMapping(method, binding, template),
                    kind=kind,
                    upload=upload,
                    label=template.openapi_path,
                )
                self.table.add(binding.verb, template, route)
                self.routes.append(route)

    @property
    def services(self) -> list[str]:
        return sorted({route.method.service for route in self.routes})
