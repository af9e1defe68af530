"""Streaming RPCs over HTTP/1.1.

- server-streaming -> ``text/event-stream``: one ``data:`` event (proto3 JSON) per message,
  ending when the RPC ends; a failure after the first event becomes an ``event: error``.
- server-streaming ``google.api.HttpBody`` -> the bytes, with the first message's content type.
- client-streaming <- ``multipart/form-data``: the form fields (and the file's name and type)
  fill the first message, then the file's bytes go out in chunks as they arrive: the
  gateway never holds more than one chunk of the file.
The first message of a server stream is awaited before the response starts, so a call
that fails at once (unknown id, no credentials) is answered with its JSON error and status.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import orjson
from google.protobuf import descriptor, message
from grpc._cython import cygrpc
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import bad_request, from_rpc_error, payload_too_large, unsupported_media_type
from gateway.exchange import ClientDisconnected, Exchange, watch_disconnect
from gateway.transcoding import QueryField, check_request, parse_strings, string_fields, to_json
from kit.errors import Reason, excerpt

log = logging.getLogger("stylestudio.gateway")

EVENT_STREAM = b"text/event-stream"
OCTET_STREAM = "application/octet-stream"
_SSE_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
_MAX_FORM_FIELD_BYTES = 64 * 1024
# A file sent before the form's fields is spooled: this much in memory, the rest on disk.
_SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_FILE_PART = "file"


class StreamBroken(Exception):
    """A download failed after its first bytes were sent: the connection is dropped so the
    client sees a truncated body rather than a complete-looking wrong one."""


async def serve_event_stream(
    exchange: Exchange,
    call: Any,
    encode: Callable[[message.Message], bytes],
    default_retry_after: int,
    heartbeat_seconds: float,
    service: str = "",
) -> None:
    first = await _first_message(call, default_retry_after, service)
    await exchange.start_stream(200, EVENT_STREAM, _SSE_HEADERS)
    disconnected = asyncio.Event()
    watcher = watch_disconnect(exchange, _stop(disconnected, call))
    try:
        item = first
        while item is not grpc.aio.EOF:
            await exchange.write(b"data: " + encode(item) + b"\n\n")
            item = await _read_with_heartbeat(exchange, call, heartbeat_seconds)
    except grpc.aio.AioRpcError as error:
        if not disconnected.is_set():
            failure = from_rpc_error(error, default_retry_after, service)
            await exchange.write(b"event: error\ndata: " + failure.json() + b"\n\n")
    except asyncio.CancelledError:
        if not disconnected.is_set():
            raise  # not our doing: the gateway itself is being cancelled
    finally:
        watcher.cancel()
    if not disconnected.is_set():
        await exchange.end_stream()


async def serve_download(
    exchange: Exchange,
    call: Any,
    default_retry_after: int,
    service: str = "",
    if_none_match: str = "",
    media_types: Sequence[str] = (OCTET_STREAM,),
) -> None:
    # The service sends its headers before reading any bytes: a client's copy that is still
    # current (If-None-Match) is answered 304 without them.
    passed = await _passed_headers(call)
    etag = dict(passed).get(b"etag")
    if if_none_match and etag is not None and etag_matches(if_none_match, etag.decode()):
        call.cancel()
        await exchange.not_modified([(k, v) for k, v in passed if k in _NOT_MODIFIED_HEADERS])
        return
    first = await _first_message(call, default_retry_after, service)
    if first is grpc.aio.EOF:
        await exchange.respond(200, b"", OCTET_STREAM.encode(), DOWNLOAD_HEADERS)
        return
    content_type = served_type(first.content_type, media_types)
    headers = passed + DOWNLOAD_HEADERS
    await exchange.start_stream(200, content_type.encode(), headers)
    disconnected = asyncio.Event()
    watcher = watch_disconnect(exchange, _stop(disconnected, call))
    try:
        item = first
        while item is not grpc.aio.EOF:
            if item.data:
                await exchange.write(item.data)
            item = await call.read()
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
        if disconnected.is_set():
            return
        if isinstance(error, asyncio.CancelledError):
            raise
        log.warning("download broken mid-stream", extra={"code": error.code().name})
        raise StreamBroken from error
    finally:
        watcher.cancel()
    await exchange.end_stream()


# Response metadata a download's service may set, passed on as HTTP headers of the same name.
_PASSED_HEADERS = ("cache-control", "etag", "last-modified", "content-disposition")
# What a 304 repeats of the 200 it stands for (RFC 9110 15.4.5).
_NOT_MODIFIED_HEADERS = (b"cache-control", b"etag")


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110's weak comparison of an If-None-Match list (or ``*``) with the current ETag."""
    if if_none_match.strip() == "*":
        return True
    current = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == current for tag in if_none_match.split(","))


# Every download: the browser must take the content type as given (a PNG that is also HTML
# stays a PNG), and a document opened from it runs nothing and loads nothing.
DOWNLOAD_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; sandbox"),
]


async def _passed_headers(call: Any) -> list[tuple[bytes, bytes]]:
    metadata = await call.initial_metadata() or ()
    return [
        (key.encode(), value.encode())
        for key, value in metadata
        if key in _PASSED_HEADERS and isinstance(value, str) and _is_header_safe(value)
    ]


async def _read_with_heartbeat(exchange: Exchange, call: Any, heartbeat_seconds: float) -> Any:
    """The next message; meanwhile a comment line every ``heartbeat_seconds`` keeps proxies
    from closing a quiet stream (a generation can stay QUEUED for minutes)."""
    read = asyncio.ensure_future(call.read())
    try:
        while True:
            done, _ = await asyncio.wait((read,), timeout=heartbeat_seconds)
            if done:
                return read.result()
            await exchange.write(b": keep-alive\n\n")
    finally:
        if not read.done():
            read.cancel()


def _stop(disconnected: asyncio.Event, call: Any) -> Callable[[], None]:
    def stop() -> None:
        disconnected.set()
        call.cancel()

    return stop


async def _first_message(call: Any, default_retry_after: int, service: str = "") -> Any:
    try:
        return await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error, default_retry_after, service) from error


def served_type(content_type: str, media_types: Sequence[str]) -> str:
    """The Content-Type content goes out with: the service's own where the route declares it
    (``media_types``, its OpenAPI document's list), application/octet-stream otherwise. What
    a generated client was told is then what it gets, and a stored type never turns bytes
    into a page (text/html) on our origin."""
    essence = content_type.split(";", 1)[0].strip().lower()
    if essence in media_types and _is_header_safe(content_type):
        return content_type
    return OCTET_STREAM


def _is_header_safe(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable()


class UploadMapping:
    """How a client-streaming RPC is fed from a multipart form.

    The request message has one ``bytes`` field (the chunks); its other fields, or those
    of its one message field (``metadata``), are the form fields, set on the first message.
    The file part's name and declared type fill ``filename`` / ``content_type`` if present.
    """

    def __init__(self, request: descriptor.Descriptor, request_class: type[message.Message]) -> None:
        chunk_fields = [field for field in request.fields if field.type == field.TYPE_BYTES]
        if len(chunk_fields) != 1:
            raise ValueError(f"{request.full_name}: an upload request needs exactly one bytes field")
        self.chunk_field = chunk_fields[0].name
        self.request_class = request_class
        holders = [
            field for field in request.fields if field.message_type is not None and not field.is_repeated
        ]
        self.fields: dict[str, QueryField] = {}
        if holders:
            holder = holders[0]
            self.fields = string_fields(holder.message_type, set(), (holder.json_name,))
        self.fields.update(string_fields(request, {self.chunk_field, *(h.name for h in holders)}))
        self.filename_field = "filename" if "filename" in self.fields else None
        self.content_type_field = "content_type" if "content_type" in self.fields else None

    def first_message(
        self, bound: message.Message, fields: list[tuple[str, str]], filename: str, content_type: str
    ) -> bytes:
        given = {name for name, _ in fields}
        pairs = list(fields)
        if self.filename_field and self.filename_field not in given and "filename" not in given:
            pairs.append((self.filename_field, filename))
        if self.content_type_field and not given & {"content_type", "contentType"}:
            pairs.append((self.content_type_field, content_type))
        request = self.request_class()
        request.MergeFrom(bound)
        parse_strings(self.fields, pairs, request)
        check_request(request)
        return request.SerializeToString()

    def chunk(self, data: bytes) -> bytes:
        return self.request_class(**{self.chunk_field: data}).SerializeToString()


async def send_upload(
    exchange: Exchange,
    call: Any,
    upload: UploadMapping,
    bound: message.Message,
    limit: int,
    chunk_bytes: int,
) -> None:
    """Streams the form into ``call`` (already started); the caller awaits the response."""
    content_type, options = parse_options_header(exchange.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise unsupported_media_type("Send the file as multipart/form-data")
    declared = exchange.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise payload_too_large(limit, Reason.FILE_TOO_LARGE)
    form = _MultipartReader(exchange, boundary, limit)
    fields: list[tuple[str, str]] = []
    event = await form.next_event()
    while event[0] == "field":
        fields.append((event[1], event[2]))
        event = await form.next_event()
    if event[0] != "file":
        raise bad_request(f"The form has no {_FILE_PART!r} part", _FILE_PART)
    filename, declared_type = event[1], event[2]
    if not fields:
        # The file came first: its fields may follow it, and the first message needs them.
        # Spool the file (memory up to a point, then a temporary file) until the form ends.
        await _send_spooled(call, form, upload, bound, filename, declared_type, chunk_bytes)
        return
    if not await _send(call, upload.first_message(bound, fields, filename, declared_type)):
        return
    buffer = bytearray()
    async for data in form.file_data():
        buffer += data
        if len(buffer) >= chunk_bytes:
            if not await _send(call, upload.chunk(bytes(buffer))):
                return  # the service has answered (e.g. FILE_TOO_LARGE): the rest is not read
            buffer.clear()
    if buffer and not await _send(call, upload.chunk(bytes(buffer))):
        return
    await _done_writing(call)


async def _send_spooled(
    call: Any,
    form: _MultipartReader,
    upload: UploadMapping,
    bound: message.Message,
    filename: str,
    declared_type: str,
    chunk_bytes: int,
) -> None:
    fields: list[tuple[str, str]] = []
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES) as spool:
        async for data in form.file_data(trailing_fields=fields):
            spool.write(data)
        if not await _send(call, upload.first_message(bound, fields, filename, declared_type)):
            return
        spool.seek(0)
        while chunk := spool.read(chunk_bytes):
            if not await _send(call, upload.chunk(chunk)):
                return
    await _done_writing(call)


async def _done_writing(call: Any) -> None:
    try:
        await call.done_writing()
    except cygrpc.InternalError:
        return  # the service answered meanwhile; its status is the call's


async def _send(call: Any, data: bytes) -> bool:
    """Writes one message of a client stream; False once the service has ended the call.

    grpc.aio's ``write()`` turns a send refused because the service already answered
    (an upload refused mid-way) into a local INTERNAL "Internal error from Core" status
    that replaces the service's own (seen with grpcio 1.85, about 1 time in 30 under
    load). Sending through the call's Cython object keeps the service's status; where
    that object is missing (another grpcio), ``write()`` is used.
    """
    if call.done():
        return False
    cython_call = getattr(call, "_cython_call", None)
    metadata_sent = getattr(call, "_metadata_sent", None)
    if cython_call is None or metadata_sent is None:
        try:
            await call.write(data)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False
        return True
    if not metadata_sent.is_set():
        await metadata_sent.wait()
        if call.done():
            return False
    try:
        await cython_call.send_serialized_message(data)
    except cygrpc.InternalError:
        return False
    except asyncio.CancelledError:
        if not call.cancelled():
            call.cancel()
        raise
    return True


class _MultipartReader:
    """Pull-style events over python-multipart's push parser, read from ASGI only on demand."""

    def __init__(self, exchange: Exchange, boundary: bytes, limit: int) -> None:
        self._exchange = exchange
        self._limit = limit
        self._received = 0
        self._more = True
        self._events: collections.deque[tuple[Any, ...]] = collections.deque()
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._is_file = False
        self._files = 0
        self._field_name = ""
        self._field_value = bytearray()
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_end": lambda: self._events.append(("end",)),
        }
        self._parser = MultipartParser(boundary, callbacks)

    async def next_event(self) -> tuple[Any, ...]:
        while not self._events:
            if not self._more:
                raise bad_request("The multipart body ends before its closing boundary")
            await self._feed()
        return self._events.popleft()

    async def file_data(self, trailing_fields: list[tuple[str, str]] | None = None) -> AsyncIterator[bytes]:
        """The file part's bytes, to the end of the form. Fields after the file are collected
        into ``trailing_fields`` when given, refused otherwise (the file is already streaming)."""
        while True:
            event = await self.next_event()
            if event[0] == "data":
                yield event[1]
            elif event[0] == "file_end":
                continue
            elif event[0] == "end":
                return
            elif event[0] == "file":
                raise bad_request("Send one file per upload", _FILE_PART)
            elif trailing_fields is not None:
                trailing_fields.append((event[1], event[2]))
            else:
                raise bad_request(
                    f"Form field {excerpt(event[1])!r} must come before the file, as the others do",
                    event[1],
                )

    async def _feed(self) -> None:
        message = await self._exchange.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        self._received += len(chunk)
        if self._received > self._limit:
            raise payload_too_large(self._limit, Reason.FILE_TOO_LARGE)
        self._more = bool(message.get("more_body", False))
        try:
            if chunk:
                self._parser.write(chunk)
            if not self._more:
                self._parser.finalize()
        except (FormParserError, ValueError) as error:
            raise bad_request(f"Malformed multipart body: {error}") from error

    def _part_begin(self) -> None:
        self._headers, self._is_file = {}, False
        self._field_value = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._field_name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._field_name == _FILE_PART or filename is not None:
            self._is_file = True
            self._files += 1
            declared = self._headers.get(b"content-type", b"").decode("latin-1") or OCTET_STREAM
            name = (filename or b"").decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            self._events.append(("file", name, declared))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._events.append(("data", bytes(data[start:end])))
            return
        self._field_value += data[start:end]
        if len(self._field_value) > _MAX_FORM_FIELD_BYTES:
            raise bad_request(f"Form field {excerpt(self._field_name)!r} is too long", self._field_name)

    def _part_end(self) -> None:
        if self._is_file:
            self._events.append(("file_end",))
            return
        try:
            value = self._field_value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise bad_request(
                f"Form field {excerpt(self._field_name)!r} is not UTF-8", self._field_name
            ) from error
        self._events.append(("field", self._field_name, value))


def encode_event(response: message.Message) -> bytes:
    return orjson.dumps(to_json(response))
