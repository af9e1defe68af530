"""No input gets a 5xx: every field of every public route, on the running platform.

The routes and their request fields come from the descriptor set the gateway serves
(gateway.api), nested messages and repeated ones included. Each field gets what broke the
platform before: control characters in strings, enum numbers outside the declared values,
integers at the ends of (and past) their type, non-finite floats, odd timestamps, deep or
dirty JSON objects. Each goes twice: through the gateway (where it is a path variable,
a query parameter, a JSON body field or a form field) and straight to the service over
gRPC with the same credentials, so both the gateway's edge and the kit's own checks are
exercised. Nothing may answer 5xx; every 4xx has API.md's error body; a control character
or an unknown enum number is a 400 VALIDATION_ERROR naming the field, and so are a forged page
token and a negative page size on every list. The test counts what it covered and fails if it
covered less than the descriptors hold.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from google.protobuf import descriptor, message
from google.protobuf.descriptor import FieldDescriptor

from gateway.api import Api, ApiRoute, CallKind
from gateway.descriptors import HTTP_BODY, ApiDescriptors
from gateway.errors import from_rpc_error
from gateway.settings import DEFAULT_DESCRIPTOR_SET
from stylestudio.common.v1 import access_pb2, input_pb2
from tests.harness import Platform
from tests.harness.platform import REPO_ROOT
from tests.harness.rest import sign_up

API = Api(ApiDescriptors.from_file(DEFAULT_DESCRIPTOR_SET))
ERROR_KEYS = {"code", "status", "reason", "message", "details"}
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
    b"\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82"
)
CONTROL = ["a\x00b", "a\x07b", "a\x1bb", "a\x7fb", "a\x85b", "a\nb"]
ENUM_NUMBERS = [99, -1, 2**31 - 1]
INTEGERS = [2**31 - 1, -(2**31), -1, 2**63 - 1, -(2**63), 2**63, 2**64]
FLOATS = ["NaN", "Infinity", "-Infinity", 1e308]
TIMESTAMPS = ["0000-01-01T00:00:00Z", "9999-12-31T23:59:60Z", "-1", "1e20", "2024-13-45T99:99:99Z"]
INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32: 32,
    FieldDescriptor.TYPE_SINT32: 32,
    FieldDescriptor.TYPE_SFIXED32: 32,
    FieldDescriptor.TYPE_UINT32: 32,
    FieldDescriptor.TYPE_FIXED32: 32,
    FieldDescriptor.TYPE_INT64: 64,
    FieldDescriptor.TYPE_SINT64: 64,
    FieldDescriptor.TYPE_SFIXED64: 64,
    FieldDescriptor.TYPE_UINT64: 64,
    FieldDescriptor.TYPE_FIXED64: 64,
}
MAX_NESTING = 3
CONCURRENCY = 8


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Page tokens are opaque base64 that kit.paging decodes, beyond the descriptors' rules: every
# forged one (deep JSON once made a json.loads raise RecursionError, '²' passed an isdigit and
# not int()) is a 400 naming pageToken on every list, as the request checks name a field.
FORGED_PAGE_TOKENS = [
    "not base64!",
    _token(b"[" * 2000 + b"]" * 2000),
    _token("\u00b2".encode()),  # superscript two: str.isdigit() says yes, int() says no
    _token(b"9" * 5000),
    _token(b"99999999999999999999"),
    _token(b'{"t": "2024-01-01T00:00:00+00:00", "i": 5}'),
    _token(b"2024-01-01T00:00:00|not-a-uuid|x"),
    _token(b"\xff\xfe"),
    _token(b"-1"),
    _token(b"253402300800000000." + b"0" * 32),  # past year 9999
    _token(b"1767225600000000.not-a-uuid"),
    "A" * 5000,
]


def _negative_and_held(integer: int, field: FieldDescriptor) -> bool:
    """A negative number the field's type holds: as a page size, a 400 naming pageSize on every
    list (kit.paging.page_size); past the type it is the gateway's to refuse, in its own way."""
    return -(2 ** (INTEGER_TYPES[field.type] - 1)) <= integer < 0


def _deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": "x"}
    for _ in range(levels):
        value = {"k": value}
    return value


STRUCTS: list[object] = [{"k\u0000": 1}, {"k": "v\u0000"}, {"k": ["ok", {"n": "\u0007"}]}, _deep(100), []]


@dataclass(frozen=True)
class Leaf:
    """One field of a route's request message, and where an HTTP request sets it."""

    route: ApiRoute
    path: tuple[str, ...]  # proto names from the request message
    json_path: tuple[str, ...]  # JSON names; a repeated message's element is "name[0]"
    field: FieldDescriptor
    where: str | None  # "path", "query", "body", "form"; None: not settable over HTTP
    name: str = ""  # the query parameter or form field

    @property
    def field_name(self) -> str:
        """How a refusal names it: the JSON path, ``[0]`` for an element of a repeated field."""
        named = ".".join(self.json_path).replace(".[", "[")
        return named + ("[0]" if self.field.is_repeated and self.field.message_type is None else "")

    def __str__(self) -> str:
        return f"{self.route.verb} {self.route.label} {'.'.join(self.json_path)}"


def kind_of(field: FieldDescriptor) -> str:
    message_type = field.message_type
    if message_type is not None:
        return {"google.protobuf.Struct": "struct", "google.protobuf.Timestamp": "timestamp"}.get(
            message_type.full_name, "message"
        )
    if field.type == FieldDescriptor.TYPE_STRING:
        return "string"
    if field.type == FieldDescriptor.TYPE_ENUM:
        return "enum"
    if field.type in INTEGER_TYPES:
        return "integer"
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "float"
    return "other"  # bool, bytes


def leaves_of(route: ApiRoute) -> list[Leaf]:
    found: list[Leaf] = []

    def walk(message_type: descriptor.Descriptor, path: tuple[str, ...], json_path: tuple[str, ...]) -> None:
        for field in message_type.fields:
            if field.message_type is not None and field.message_type.full_name == HTTP_BODY:
                continue  # the raw body of a webhook: sent whole, below
            field_path, field_json = (*path, field.name), (*json_path, field.json_name)
            if kind_of(field) == "message" and not field.message_type.GetOptions().map_entry:
                if len(field_path) < MAX_NESTING:
                    element = (*json_path, f"{field.json_name}[0]") if field.is_repeated else field_json
                    walk(field.message_type, field_path, element)
                continue
            if kind_of(field) == "other":
                continue
            found.append(Leaf(route, field_path, field_json, field, *_where(route, field_path, field_json)))

    walk(route.method.descriptor.input_type, (), ())
    return found


def _where(route: ApiRoute, path: tuple[str, ...], json_path: tuple[str, ...]) -> tuple[str | None, str]:
    mapping = route.mapping
    plain = tuple(part.removesuffix("[0]") for part in json_path)
    if path in mapping.path_fields:
        return "path", ""
    if route.kind is CallKind.UPLOAD and route.upload is not None:
        names = [name for name, known in route.upload.fields.items() if known.path == plain]
        return ("form", names[0]) if names else (None, "")
    if mapping.body == "*" or (mapping.body_field is not None and path[0] == mapping.body_field.name):
        return "body", ""
    dotted = ".".join(plain)
    if dotted in mapping.query_fields and "[0]" not in "".join(json_path):
        return "query", dotted
    return None, ""


def values_for(leaf: Leaf) -> Iterator[tuple[object, bool]]:
    """(value, whether it must be a 400 naming the field) for the leaf's kind."""
    field = leaf.field
    rules = field.GetOptions().Extensions[input_pb2.input] if field.has_options else input_pb2.InputRules()
    match kind_of(field):
        case "string":
            for text in CONTROL:
                yield text, not rules.raw_text and not (rules.multiline and text == "a\nb")
            if field.name == "page_token":
                for token in FORGED_PAGE_TOKENS:
                    yield token, True
        case "enum":
            for number in ENUM_NUMBERS:
                yield number, True
        case "integer":
            for integer in INTEGERS:
                yield integer, field.name == "page_size" and _negative_and_held(integer, field)
        case "float":
            for special in FLOATS:
                yield special, False
        case "timestamp":
            for text in TIMESTAMPS:
                yield text, False
        case "struct":
            for index, value in enumerate(STRUCTS):
                yield value, index < 3


def _nested(json_path: tuple[str, ...], value: object) -> dict[str, object]:
    document: object = value
    for part in reversed(json_path):
        if part.endswith("[0]"):
            document = {part.removesuffix("[0]"): [document]}
        else:
            document = {part: document}
    assert isinstance(document, dict)
    return document


@dataclass
class Credentials:
    user_id: str
    user: str
    admin: str

    def for_route(self, route: ApiRoute) -> dict[str, str]:
        access = route.method.access
        if access == access_pb2.ACCESS_PUBLIC:
            return {}
        token = self.admin if access == access_pb2.ACCESS_ADMIN else self.user
        return {"Authorization": f"Bearer {token}"}


async def _log_in(gateway: httpx.AsyncClient, email: str, password: str) -> str:
    response = await gateway.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["accessToken"])


async def real_credentials(gateway: httpx.AsyncClient, platform: Platform) -> Credentials:
    """A signed-up pro user and a signed-up admin (made on the command line, as operators do)."""
    password = f"Malformed-{uuid.uuid4().hex}"
    user_email, admin_email = (f"{who}-{uuid.uuid4().hex[:10]}@example.com" for who in ("user", "admin"))
    user = await sign_up(gateway, user_email, password)
    await sign_up(gateway, admin_email, password)
    promoted = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.users.admin", "promote", "--email", admin_email],
        cwd=REPO_ROOT,
        env=platform.env("users"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promoted.returncode == 0, promoted.stderr
    admin = await _log_in(gateway, admin_email, password)
    as_admin = {"Authorization": f"Bearer {admin}"}
    user_id = str(user["user"]["id"])
    upgrade = await gateway.patch(f"/v1/admin/users/{user_id}", json={"plan": "pro"}, headers=as_admin)
    assert upgrade.status_code == 200, upgrade.text
    return Credentials(user_id, await _log_in(gateway, user_email, password), admin)


# --- over HTTP ----------------------------------------------------------------------------------


def _url(route: ApiRoute, credentials: Credentials, override: tuple[tuple[str, ...], str] | None) -> str:
    """The route's path with its variables filled: the value under test for one, ids for the others."""
    template = route.template
    parts = list(template.segments)
    for variable in sorted(template.variables, key=lambda v: v.start, reverse=True):
        if override is not None and variable.field_path == override[0]:
            value = override[1]
        elif route.method.access == access_pb2.ACCESS_ADMIN and variable.field_path == ("user_id",):
            value = credentials.user_id
        elif variable.field_path == ("provider",):
            value = "google"
        else:
            value = str(uuid.uuid4())
        end = len(parts) if variable.length < 0 else variable.start + variable.length
        parts[variable.start : end] = [quote(value, safe="")]
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


async def send_http(
    gateway: httpx.AsyncClient, leaf: Leaf, value: object, credentials: Credentials
) -> httpx.Response:
    route, headers = leaf.route, credentials.for_route(leaf.route)
    text = value if isinstance(value, str) else json.dumps(value)
    url = _url(route, credentials, (leaf.path, text) if leaf.where == "path" else None)
    if leaf.where == "query":
        url += f"?{quote(leaf.name)}={quote(text, safe='')}"
    if route.kind is CallKind.UPLOAD:
        form = {"category": "product_image"}
        if leaf.where == "form":
            form[leaf.name] = text
        files = {"file": ("p.png", PNG, "image/png")}
        return await gateway.post(url, data=form, files=files, headers=headers)
    body: bytes | None = None
    if leaf.where == "body":
        json_path = leaf.json_path
        if route.mapping.body_field is not None:  # body: "field" -> the body is that field's value
            json_path = json_path[1:]
        leaf_value = [value] if leaf.field.is_repeated and leaf.field.message_type is None else value
        body = json.dumps(_nested(json_path, leaf_value) if json_path else leaf_value).encode()
    elif route.mapping.has_body and not route.mapping.raw_body:
        body = b"{}"
    if body is not None:
        headers = {**headers, "Content-Type": "application/json"}
    return await gateway.request(route.verb, url, content=body, headers=headers)


def check_http(response: httpx.Response, leaf: Leaf | None, must_refuse: bool, what: str) -> None:
    assert response.status_code < 500, (what, response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == ERROR_KEYS, (what, error)
        assert error["code"] == response.status_code, (what, error)
    if must_refuse:
        assert leaf is not None
        assert response.status_code == 400, (what, response.text[:500])
        error = response.json()["error"]
        assert error["reason"] == "VALIDATION_ERROR", (what, error)
        assert error["details"].get("field", "").startswith(leaf.field_name), (what, error)


# --- straight to the service ---------------------------------------------------------------------


def _set(request: message.Message, leaf: Leaf, value: object) -> bool:
    """Puts ``value`` into the request message at the leaf's path; False if the type cannot hold it."""
    target = request
    for name, json_name in zip(leaf.path[:-1], leaf.json_path[:-1], strict=True):
        child = getattr(target, name)
        target = child.add() if json_name.endswith("[0]") else child
    field = leaf.field
    try:
        if kind_of(field) == "struct":
            if not isinstance(value, dict):
                return False
            getattr(target, field.name).update(value)
        elif kind_of(field) == "timestamp":
            return False  # JSON text: only the gateway parses it
        elif field.is_repeated:
            getattr(target, field.name).append(value)
        else:
            setattr(target, field.name, value)
    except (ValueError, TypeError):
        return False  # past the type's range: no client can send it over gRPC either
    return True


async def call_grpc(
    platform: Platform, leaf: Leaf, value: object, credentials: Credentials
) -> grpc.aio.AioRpcError | None:
    route = leaf.route
    request = route.method.request_class()
    if not _set(request, leaf, value):
        return None
    payload = request.SerializeToString()
    service = route.method.service.split(".")[1]
    channel = _channels(platform)[service]
    metadata = tuple((key.lower(), value) for key, value in credentials.for_route(route).items())
    path, identity = route.method.grpc_path, (lambda data: data)
    try:
        if route.method.client_streaming:
            stream = channel.stream_unary(path, request_serializer=identity, response_deserializer=identity)

            async def one() -> Any:
                yield payload

            await stream(one(), metadata=metadata, timeout=10)
        elif route.method.server_streaming:
            call = channel.unary_stream(path, request_serializer=identity, response_deserializer=identity)(
                payload, metadata=metadata, timeout=10
            )
            await call.read()
            call.cancel()
        else:
            unary = channel.unary_unary(path, request_serializer=identity, response_deserializer=identity)
            await unary(payload, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error
    return None


_OPEN: dict[str, grpc.aio.Channel] = {}


def _channels(platform: Platform) -> dict[str, grpc.aio.Channel]:
    if not _OPEN:
        for service in platform.addresses:
            _OPEN[service] = platform.user_channel(service)
    return _OPEN


def check_grpc(error: grpc.aio.AioRpcError | None, leaf: Leaf, must_refuse: bool, what: str) -> None:
    if error is None:
        assert not must_refuse, (what, "accepted")
        return
    answer = from_rpc_error(error, 60)
    assert answer.http_status < 500, (what, error.code(), error.details())
    metadata = dict(error.trailing_metadata() or ())
    assert "grpc-status-details-bin" in metadata, (what, "a status no service raised", error.code())
    if must_refuse:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, error.code(), error.details())
        assert answer.reason == "VALIDATION_ERROR", (what, answer)
        assert answer.details.get("field", "").startswith(leaf.field_name), (what, answer)


# --- the test -------------------------------------------------------------------------------------

RAW_BODIES = [
    b"\x00\xff\xfe",
    b"[" * 5000 + b"]" * 5000,
    b'{"id": "evt_\\u0000", "type": "payment_intent.succeeded", "data": {"object": {"amount_received": []}}}',
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


async def _bounded(tasks: list[Callable[[], Awaitable[None]]]) -> None:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def run(task: Callable[[], Awaitable[None]]) -> None:
        async with slots:
            await task()

    await asyncio.gather(*(run(task) for task in tasks))


async def test_no_field_of_any_public_route_gets_a_server_error(
    gateway: httpx.AsyncClient, platform: Platform
) -> None:
    credentials = await real_credentials(gateway, platform)
    routes = API.routes
    leaves = [leaf for route in routes for leaf in leaves_of(route)]
    over_http = [leaf for leaf in leaves if leaf.where is not None]
    expected_http = sum(len(list(values_for(leaf))) for leaf in over_http)
    expected_grpc = {(leaf.route.method.full_name, leaf.path) for leaf in leaves}
    covered_http: set[tuple[str, object]] = set()
    covered_grpc: set[tuple[str, tuple[str, ...]]] = set()
    visited: set[str] = set()

    def http_case(leaf: Leaf, value: object, must_refuse: bool) -> Callable[[], Awaitable[None]]:
        async def case() -> None:
            response = await send_http(gateway, leaf, value, credentials)
            check_http(response, leaf, must_refuse, f"{leaf} = {value!r:.60}")
            covered_http.add((str(leaf), json.dumps(value)))
            visited.add(f"{leaf.route.verb} {leaf.route.label}")

        return case

    def grpc_case(leaf: Leaf, value: object, must_refuse: bool) -> Callable[[], Awaitable[None]]:
        async def case() -> None:
            error = await call_grpc(platform, leaf, value, credentials)
            check_grpc(error, leaf, must_refuse, f"gRPC {leaf.route.method.full_name} {leaf} = {value!r:.60}")
            covered_grpc.add((leaf.route.method.full_name, leaf.path))

        return case

    def route_case(route: ApiRoute, body: bytes | None) -> Callable[[], Awaitable[None]]:
        """Every route, fields or not: an unknown parameter with a NUL, or a raw body of garbage."""

        async def case() -> None:
            headers = credentials.for_route(route)
            url = _url(route, credentials, None)
            if body is None:
                response = await gateway.request(route.verb, url + "?unknown%00=%00", headers=headers)
            else:
                headers = {**headers, "Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"}
                response = await gateway.request(route.verb, url, content=body, headers=headers)
            check_http(response, None, False, f"{route.verb} {route.label} with {(body or b'')[:30]!r}")
            assert response.status_code >= 400, (route.label, response.text[:300])
            visited.add(f"{route.verb} {route.label}")

        return case

    tasks: list[Callable[[], Awaitable[None]]] = []
    for leaf in leaves:
        for value, must_refuse in values_for(leaf):
            if leaf.where is not None:
                tasks.append(http_case(leaf, value, must_refuse))
            tasks.append(grpc_case(leaf, value, must_refuse and kind_of(leaf.field) != "timestamp"))
    for route in routes:
        tasks.append(route_case(route, None))
        for body in RAW_BODIES if route.mapping.raw_body else ():
            tasks.append(route_case(route, body))
    await _bounded(tasks)

    assert len(over_http) >= 70 and len(routes) >= 40  # what the protos held when this was written
    assert len(covered_http) == expected_http
    assert covered_grpc == expected_grpc
    assert visited == {f"{route.verb} {route.label}" for route in routes}


ISSUE_REQUESTS = [
    ("POST", "/v1/generations", "user", {"productImageFiles": ["f"], "prompt": "a\u0000b"}, "prompt"),
    ("POST", "/v1/analytics/usage", "user", {"action": "x", "metadata": {"k\u0000": "v"}}, "metadata"),
    ("POST", "/v1/analytics/usage", "user", {"action": "x", "metadata": {"k": "v\u0000"}}, 'metadata["k"]'),
    ("POST", "/v1/analytics/usage", "user", {"action": "x", "sessionId": "s\u0000"}, "sessionId"),
    ("PATCH", "/v1/users/me", "user", {"imageUrl": "https://a\u0000b"}, "imageUrl"),
    ("POST", "/v1/admin/users/{user}/tokens:grant", "admin", {"amount": "5", "reason": "r\u0000"}, "reason"),
    ("GET", "/v1/generations?status=99", "user", None, "status"),
    ("GET", "/v1/generations?status=-1", "user", None, "status"),
    ("POST", "/v1/admin/users/{user}/tokens:grant", "admin", {"amount": "9223372036854775807", "reason": "r"},
     "amount"),
]  # fmt: skip


@pytest.mark.parametrize(("verb", "path", "who", "body", "field"), ISSUE_REQUESTS)
async def test_the_requests_that_answered_500_in_the_review_are_400_naming_the_field(
    gateway: httpx.AsyncClient, platform: Platform, verb: str, path: str, who: str, body: object, field: str
) -> None:
    credentials = await _shared_credentials(gateway, platform)
    token = credentials.admin if who == "admin" else credentials.user
    url, headers = path.replace("{user}", credentials.user_id), {"Authorization": f"Bearer {token}"}
    response = await gateway.request(verb, url, json=body, headers=headers)
    error = response.json()["error"]
    assert (response.status_code, error["reason"]) == (400, "VALIDATION_ERROR"), response.text
    assert error["details"]["field"] == field


async def test_a_long_input_is_not_echoed_and_a_huge_authorization_header_is_431(
    gateway: httpx.AsyncClient, platform: Platform
) -> None:
    credentials = await _shared_credentials(gateway, platform)
    headers = {"Authorization": f"Bearer {credentials.user}"}
    long = "q" * 100_000
    for response in (
        await gateway.post("/v1/billing/estimate", json={"model": long}),
        await gateway.post("/v1/billing/purchases", json={"packageName": long}, headers=headers),
        await gateway.post("/v1/generations", json={"productImageFiles": ["f"], "prompt": "p",
                                                    "parameters": {"style": long}}, headers=headers),
    ):  # fmt: skip
        assert 400 <= response.status_code < 500, response.text[:300]
        assert "q" * 100 not in response.text and "metadata" not in response.text
        assert response.json()["error"]["reason"] != "RATE_LIMITED"
    huge = await gateway.get("/v1/users/me", headers={"Authorization": "Bearer " + "a" * 16 * 1024})
    assert huge.status_code == 431 and set(huge.json()["error"]) == ERROR_KEYS


_SHARED: list[Credentials] = []


async def _shared_credentials(gateway: httpx.AsyncClient, platform: Platform) -> Credentials:
    if not _SHARED:
        _SHARED.append(await real_credentials(gateway, platform))
    return _SHARED[0]


def _stripe_event(event_id: str, data: dict[str, object]) -> bytes:
    return json.dumps({"id": event_id, "type": "payment_intent.succeeded", "data": {"object": data}}).encode()


ID = uuid.uuid4()
PAYMENT = {"object": "payment_intent", "amount_received": 5}
NUL_EVENTS = {
    "event-id": _stripe_event("evt_\u0000", {**PAYMENT, "id": "pi_1", "metadata": {"purchase_id": "p"}}),
    "payment-intent-id": _stripe_event(
        f"evt_{uuid.uuid4().hex}", {**PAYMENT, "id": "pi_\u0000", "metadata": {"purchase_id": str(ID)}}
    ),
}


@pytest.mark.parametrize("body", NUL_EVENTS.values(), ids=NUL_EVENTS.keys())
async def test_a_signed_stripe_event_with_a_nul_is_a_4xx(gateway: httpx.AsyncClient, body: bytes) -> None:
    """Text inside a webhook's JSON is beyond the descriptors: the database's refusal of it is
    the caller's 400 (kit.validation.database_refusal), not a 500."""
    from services.billing.payments import sign_payload
    from services.billing.settings import BillingSettings

    secret = BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value()
    headers = {"Content-Type": "application/json", "Stripe-Signature": sign_payload(body, secret)}
    response = await gateway.post("/webhooks/stripe", content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()["error"]) == ERROR_KEYS
