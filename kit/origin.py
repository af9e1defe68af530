"""Where a call really comes from: the client behind the gateway, or a direct gRPC caller.

The gateway forwards the HTTP client's address and user agent as gRPC metadata under
these names (gRPC replaces ``user-agent`` with its own, so the browser's travels under
a name of its own), and proves that it relayed the call with its own service credential
under ``RELAY_CREDENTIAL_HEADER``, beside the user's Authorization. The kit's interceptor
checks that credential; only then does ``client_origin`` believe the forwarded values.
Anyone else's call (a user's direct gRPC call above all) is placed at its peer address.
"""

from __future__ import annotations

import contextvars
import ipaddress
import urllib.parse
from dataclasses import dataclass

import grpc

CLIENT_ADDRESS_HEADER = "x-forwarded-for"
CLIENT_USER_AGENT_HEADER = "x-forwarded-user-agent"
RELAY_CREDENTIAL_HEADER = "x-stylestudio-relay"


@dataclass(frozen=True)
class _Served:
    """The call being served: did the gateway prove it relayed it, and the call itself."""

    relayed: bool = False
    context: grpc.aio.ServicerContext | None = None


_NOT_SERVING = _Served()
_served: contextvars.ContextVar[_Served] = contextvars.ContextVar("stylestudio_served", default=_NOT_SERVING)


def bind_relayed(
    relayed: bool, context: grpc.aio.ServicerContext | None = None
) -> contextvars.Token[_Served]:
    """Set by the interceptor for the duration of a call: did the gateway prove it relayed it?
    ``context``: the call, whose origin ``current_origin`` reads (the audit log's "from where")."""
    return _served.set(_Served(relayed, context))


def reset_relayed(token: contextvars.Token[_Served]) -> None:
    _served.reset(token)


@dataclass(frozen=True)
class ClientOrigin:
    ip: str = ""
    user_agent: str = ""


def client_origin(context: grpc.aio.ServicerContext) -> ClientOrigin:
    metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
    relayed = _served.get().relayed
    forwarded_for = metadata.get(CLIENT_ADDRESS_HEADER, "") if relayed else ""
    forwarded_agent = metadata.get(CLIENT_USER_AGENT_HEADER, "") if relayed else ""
    ip = client_address(forwarded_for, context.peer() or "")
    agent = client_user_agent(forwarded_agent, metadata.get("user-agent", ""))
    return ClientOrigin(ip=ip or "", user_agent=agent)


def current_origin() -> ClientOrigin:
    """The origin of the RPC being served (the audit log's "from where"); empty outside a call
    (an operator's command)."""
    context = _served.get().context
    return client_origin(context) if context is not None else ClientOrigin()


def client_user_agent(forwarded: str, grpc_agent: str) -> str:
    """The forwarded user agent, else a direct gRPC client's own unless it is only the gRPC
    library's default ("grpc-python/1.x ..."), which says nothing about the client."""
    if forwarded:
        return forwarded
    return "" if grpc_agent.startswith("grpc-") else grpc_agent


def client_address(forwarded_for: str, peer: str) -> str | None:
    """The first hop the gateway forwarded, else the gRPC peer's address; None if unreadable."""
    candidates = [forwarded_for.split(",")[0].strip()] if forwarded_for else []
    peer = urllib.parse.unquote(peer)
    if peer.startswith(("ipv4:", "ipv6:")):
        host = peer.split(":", 1)[1]
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
        candidates.append(host.strip("[]").split("%")[0])
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None
