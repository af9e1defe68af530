"""Which address a request comes from when proxies stand in between (X-Forwarded-For).

Each proxy appends the address it received the request from, so a chain reads
``client, proxy1, proxy2`` and the gateway's peer is the last proxy. Anyone can write
anything to the left: only entries appended by proxies the gateway trusts are facts.
So the client is found from the right: the peer, unless it is a trusted proxy; then
each hop in turn, leftwards, until one that is not a trusted proxy (the right-most
untrusted hop). An entry that is not an address ends the walk: nothing to its left can
be believed, and the last address read stands. The services receive exactly that one
address, so per-address limits key on what the client cannot choose.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A longer chain than this is not a real deployment; the walk stops at the last address read.
MAX_HOPS = 32


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["10.0.0.0/8", "192.0.2.7"]`` -> networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted_proxies: Sequence[IPNetwork]
) -> str | None:
    """The client's address: the peer's, or behind trusted proxies the right-most untrusted
    X-Forwarded-For hop. ``forwarded_for`` holds every X-Forwarded-For header, in order.
    None when the peer is not an IP address (a Unix socket)."""
    address = _address(peer or "")
    if address is None:
        return None
    if not _is_trusted(address, trusted_proxies):
        return str(address)
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for raw in reversed(hops[-MAX_HOPS:]):
        hop = _address(raw)
        if hop is None:
            break
        address = hop
        if not _is_trusted(hop, trusted_proxies):
            break
    return str(address)


def _is_trusted(address: IPAddress, trusted_proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted_proxies)


def _address(text: str) -> IPAddress | None:
    """An address as proxies write it: ``192.0.2.1``, ``192.0.2.1:8080``, ``2001:db8::1``,
    ``[2001:db8::1]:443``; IPv4-mapped IPv6 as IPv4. None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    if not text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
