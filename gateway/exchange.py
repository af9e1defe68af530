"""One HTTP request and its response, straight on ASGI (no framework on the hot path)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.errors import ApiError, bearer_challenge, payload_too_large

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"


class ClientDisconnected(Exception):
    """The client went away while its request was being read."""


class Exchange:
    """What a handler needs: the request's parts, and responses that carry the common headers."""

    __slots__ = ("common_headers", "headers", "receive", "request_id", "scope", "send", "started", "status")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        request_id: str,
        common_headers: Headers,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers = headers
        self.request_id = request_id
        self.common_headers = common_headers
        self.status = 0
        self.started = False

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def query(self) -> bytes:
        return bytes(self.scope.get("query_string", b""))

    async def respond(
        self, status: int, body: bytes, content_type: bytes = JSON, headers: Headers | None = None
    ) -> None:
        response_headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *self.common_headers,
        ]
        if headers:
            response_headers.extend(headers)
        self.status, self.started = status, True
        await self.send({"type": "http.response.start", "status": status, "headers": response_headers})
        await self.send({"type": "http.response.body", "body": body})

    async def not_modified(self, headers: Headers) -> None:
        """304: no body, no content headers; the validators and caching of the 200 it stands for."""
        self.status, self.started = 304, True
        response_headers = [*self.common_headers, *headers]
        await self.send({"type": "http.response.start", "status": 304, "headers": response_headers})
        await self.send({"type": "http.response.body", "body": b""})

    async def fail(self, error: ApiError, headers: Headers | None = None) -> None:
        response_headers = [*error.headers(), *(headers or [])]
        if error.http_status == 401:
            response_headers.append(bearer_challenge("authorization" in self.headers))
        await self.respond(error.http_status, error.json(), JSON, response_headers)

    async def start_stream(self, status: int, content_type: bytes, headers: Headers | None = None) -> None:
        response_headers = [(b"content-type", content_type), *self.common_headers, *(headers or [])]
        self.status, self.started = status, True
        await self.send({"type": "http.response.start", "status": status, "headers": response_headers})

    async def write(self, chunk: bytes) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end_stream(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def read_body(self, limit: int) -> bytes:
        """The whole request body, refused with 413 past ``limit`` (announced or actual size)."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise payload_too_large(limit)
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise payload_too_large(limit)
            return bytes(body)
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def wait_disconnect(self) -> None:
        """Returns when the client goes away (the request body must have been read already)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


def watch_disconnect(exchange: Exchange, on_disconnect: Callable[[], object]) -> asyncio.Task[None]:
    """A task that calls ``on_disconnect`` when the client goes away; cancel it when done."""

    async def watch() -> None:
        await exchange.wait_disconnect()
        on_disconnect()

    return asyncio.create_task(watch())
