"""A DNS server for tests, on loopback UDP: gRPC's c-ares resolver is pointed at it with a target's
authority (``dns://127.0.0.1:<port>/name:port``), so a name can stand for several replicas, as a
headless Service's does, without touching the machine's resolver.

It answers what the resolver asks, one question per query: the A records of a name it knows (its
``records`` may change while it runs: a scale-up), an empty answer for the name's other types
(AAAA), NXDOMAIN for any other name. Records have a TTL of 0, so nothing caches them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from typing import cast

HEADER = struct.Struct(">HHHHHH")  # id, flags, questions, answers, authority and additional records
QUESTION_TAIL = struct.Struct(">HH")  # type, class
A, IN = 1, 1
NO_ERROR, NXDOMAIN = 0, 3
RESPONSE_FLAGS = 0x8180  # a response, recursion desired and available


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.queries: Counter[str] = Counter()  # A queries by name: how often a client asked again
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self._transport is not None and (answer := self.answer(data)) is not None:
            self._transport.sendto(answer, addr)

    def answer(self, query: bytes) -> bytes | None:
        """The response to ``query``; None for what is not a query of one question."""
        if len(query) < HEADER.size:
            return None
        ident, _, questions, *_ = HEADER.unpack_from(query)
        parsed = _question(query)
        if questions != 1 or parsed is None:
            return None
        name, qtype, end = parsed
        addresses = self.records.get(name)
        if qtype == A and addresses is not None:
            self.queries[name] += 1
        records = b"".join(_a_record(address) for address in addresses or ()) if qtype == A else b""
        rcode = NO_ERROR if addresses is not None else NXDOMAIN
        count = len(addresses or ()) if qtype == A else 0
        header = HEADER.pack(ident, RESPONSE_FLAGS | rcode, 1, count, 0, 0)
        return header + query[HEADER.size : end] + records

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _question(query: bytes) -> tuple[str, int, int] | None:
    """The question's name (lower case), type, and where it ends."""
    labels, at = [], HEADER.size
    try:
        while length := query[at]:
            labels.append(query[at + 1 : at + 1 + length].decode("ascii").lower())
            at += 1 + length
        qtype, _ = QUESTION_TAIL.unpack_from(query, at + 1)
    except (IndexError, UnicodeDecodeError, struct.error):
        return None
    return ".".join(labels), qtype, at + 1 + QUESTION_TAIL.size


def _a_record(address: str) -> bytes:
    # The name as a pointer to the question's (offset 12), type A, class IN, TTL 0, 4 bytes.
    return b"\xc0\x0c" + struct.pack(">HHIH", A, IN, 0, 4) + socket.inet_aton(address)


async def serve_dns(records: dict[str, list[str]]) -> DnsServer:
    """A DnsServer on 127.0.0.1, on a free port (``.port``); ``close()`` it."""
    _, server = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: DnsServer(records), local_addr=("127.0.0.1", 0)
    )
    return server
