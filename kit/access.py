"""Who may call each RPC, read from its options in protos/ and checked before its handler runs.

    rpc ReserveTokens(ReserveTokensRequest) returns (Hold) {
      option (stylestudio.common.v1.access) = ACCESS_INTERNAL;
      option (stylestudio.common.v1.callers) = "generation";
    }

PUBLIC needs nothing, USER a signed-in user, ADMIN an admin, INTERNAL one of the service
identities its ``callers`` option names. A USER RPC may also name, in
``on_behalf_callers``, services that may call it for a user (docs/security.md). A service
refuses to start when an RPC declares no access level, when an INTERNAL one names no caller,
or when an option names an identity that does not exist: every mistake fails closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

from google.protobuf import descriptor

from kit.auth import ANONYMOUS, Caller, CallerKind, ServicePrincipal
from kit.credential_state import CredentialStates
from kit.errors import Forbidden, Unauthenticated
from kit.service_keys import IDENTITIES
from stylestudio.common.v1 import access_pb2

log = logging.getLogger("stylestudio.rpc")

Access = int  # a stylestudio.common.v1.Access value


@dataclass(frozen=True)
class MethodAccess:
    """One RPC's declared access: its level and the identities its options name."""

    level: Access
    callers: frozenset[str] = frozenset()
    on_behalf_callers: frozenset[str] = frozenset()
    # Signed-in sessions only: an API key is refused (``(stylestudio.common.v1.session_only)``).
    session_only: bool = False


def method_access(services: Iterable[descriptor.ServiceDescriptor]) -> dict[str, MethodAccess]:
    """``/package.Service/Method`` -> its declared access; raises on any missing or wrong declaration."""
    declared: dict[str, MethodAccess] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            level = options.Extensions[access_pb2.access]
            callers = frozenset(options.Extensions[access_pb2.callers])
            on_behalf = frozenset(options.Extensions[access_pb2.on_behalf_callers])
            name = method.full_name
            if level == access_pb2.ACCESS_UNSPECIFIED:
                raise ValueError(f"{name} declares no (stylestudio.common.v1.access) option")
            if level == access_pb2.ACCESS_INTERNAL and not callers:
                raise ValueError(f"{name} is INTERNAL but names no (stylestudio.common.v1.callers)")
            if callers and level != access_pb2.ACCESS_INTERNAL:
                raise ValueError(f"{name}: only INTERNAL RPCs name callers")
            if on_behalf and level != access_pb2.ACCESS_USER:
                raise ValueError(f"{name}: only USER RPCs may be called on behalf of a user")
            unknown = (callers | on_behalf) - set(IDENTITIES)
            if unknown:
                raise ValueError(f"{name} names unknown identities {sorted(unknown)}; known: {IDENTITIES}")
            session_only = options.Extensions[access_pb2.session_only]
            declared[f"/{service.full_name}/{method.name}"] = MethodAccess(
                level, callers, on_behalf, session_only
            )
    return declared


UNDECLARED = MethodAccess(access_pb2.ACCESS_INTERNAL)  # a method the protos do not know: nobody


def authorize(method: str, access: MethodAccess, caller: Caller) -> None:
    """Raise unless ``caller`` may call ``method``; a refused service is logged by name."""
    level = access.level
    if level == access_pb2.ACCESS_PUBLIC:
        return
    if level == access_pb2.ACCESS_INTERNAL:
        if not caller.is_service:
            raise Forbidden("This method is only for Style Studio services")
        if caller.subject not in access.callers:
            refuse_service(method, caller.subject)
        return
    if caller is ANONYMOUS:
        raise Unauthenticated("Sign in first: missing credentials")
    if level == access_pb2.ACCESS_ADMIN and caller.is_api_key:
        raise Forbidden("API keys cannot be used for admin routes; sign in and use an access token")
    if level == access_pb2.ACCESS_ADMIN and not caller.is_admin:
        raise Forbidden("Admins only")
    if access.session_only and caller.is_api_key:
        raise Forbidden("API keys cannot be used for this; sign in and use an access token")
    if level == access_pb2.ACCESS_USER and caller.is_service:
        refuse_service(method, caller.subject)


def refuse_service(method: str, identity: str, on_behalf_of: bool = False) -> NoReturn:
    log.warning(
        "caller not allowed",
        extra={"rpc": method, "caller_service": identity, "on_behalf_of_user": on_behalf_of},
    )
    if on_behalf_of:
        raise Forbidden(f"{identity} may not call this method on behalf of a user")
    raise Forbidden(f"{identity} may not call this method")


@dataclass(frozen=True)
class UserStanding:
    """What the users service says of a user now: their plan and role."""

    plan: str
    role: str


UserLookup = Callable[[str], Awaitable[UserStanding]]
"""A user's current standing by id; raises Unauthenticated for no such user."""


async def acting_for_user(
    method: str, access: MethodAccess, principal: ServicePrincipal, lookup: UserLookup | None
) -> Caller:
    """The user caller of an allowed on-behalf call: the user's plan and role come from the
    users service's credential state, never from the calling service."""
    if principal.identity not in access.on_behalf_callers or lookup is None:
        refuse_service(method, principal.identity, on_behalf_of=True)
    standing = await lookup(principal.on_behalf_of)
    return Caller(
        kind=CallerKind.USER,
        subject=principal.on_behalf_of,
        plan=standing.plan,
        role=standing.role,
        acting_service=principal.identity,
    )


def credential_state_lookup(states: CredentialStates) -> UserLookup:
    """A user's standing from the credential state every token check reads (kit/credential_state.py):
    one rule of freshness for a user's own calls and for calls made for them, and no extra call
    to the users service while the state is in Redis."""

    async def lookup(user_id: str) -> UserStanding:
        state = await states.current(user_id)
        if not state.exists:
            raise Unauthenticated("The user this call acts for does not exist")
        return UserStanding(plan=state.plan, role=state.role)

    return lookup
