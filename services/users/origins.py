"""What the users service makes of a client's address: the unit a per-address limit counts, and
the network the analytics may see.

One person rarely has one IPv6 address: a home or a phone gets a whole /64 and picks addresses
from it at will, so IPv6 is limited per /64 (an IPv4 address is its own unit). An address is
personal data; the analytics see only its network, truncated as web analytics do (IPv4 /24,
IPv6 /48), which still shows a burst of sign-ups from one place.
"""

from __future__ import annotations

import ipaddress

_LIMIT_PREFIX = {4: 32, 6: 64}
_ANALYTICS_PREFIX = {4: 24, 6: 48}


def _network(ip: str, prefixes: dict[int, int]) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(ipaddress.ip_network(f"{address}/{prefixes[address.version]}", strict=False))


def limit_unit(ip: str) -> str:
    """What a per-address limit counts for ``ip``: the address (IPv4) or its /64 (IPv6); empty
    when the address is unknown (no limit can be kept for it)."""
    return _network(ip, _LIMIT_PREFIX)


def analytics_network(ip: str) -> str:
    """``ip``'s network as the analytics may show it: "203.0.113.0/24", "2001:db8:1::/48"."""
    return _network(ip, _ANALYTICS_PREFIX)
