"""Security events for the audit log: one way for every service to record them.

    await audit.record(outbox, session, audit.API_KEY_CREATED, target=f"users/{uid}/apiKeys/{kid}")

inside the transaction of the change (an event of type ``audit.recorded`` in the service's
outbox, so the record commits or rolls back with the change). An event with no change to
ride on (a failed sign-in) is recorded in a transaction of its own. Who acted comes from
the caller (``kit.auth.current_caller``: a user, a service, or a service acting for a user)
and from where from the call (``kit.origin.current_origin``: the client's address and user
agent as the gateway forwarded them); an operator's command names itself (``OPERATOR``).
The analytics service keeps the events, once each, as the audit log admins read
(``GET /v1/admin/audit``; docs/security.md, "Audit log").

Details are ids and facts: plans, roles, amounts, reasons as codes. Never an email, a name,
a password, a token, a prompt or free text someone typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.auth import Caller, CallerKind, current_caller
from kit.events import Event, Outbox
from kit.origin import ClientOrigin, current_origin
from stylestudio.common.v1 import audit_pb2

AUDIT_RECORDED = "audit.recorded"

# The actions services record (docs/security.md lists who records each).
LOGIN_FAILED = "auth.login_failed"
LOGIN_THROTTLED = "auth.login_throttled"
REFRESH_TOKEN_REUSED = "auth.refresh_token_reused"
SESSIONS_ENDED = "auth.sessions_ended"
PROVIDER_LINKED = "auth.provider_linked"
API_KEY_CREATED = "api_key.created"
API_KEY_DELETED = "api_key.deleted"
PLAN_CHANGED = "user.plan_changed"
ROLE_CHANGED = "user.role_changed"
TOKENS_GRANTED = "billing.tokens_granted"
REFUND_REQUESTED = "billing.refund_requested"

# The identity an operator's command records as its actor (kit.service_keys.IDENTITIES).
OPERATOR = "operator"
# What is kept of a user agent: enough to tell clients apart, not a place to store a payload.
USER_AGENT_MAX_LENGTH = 512
_DETAIL_MAX_LENGTH = 200


@dataclass(frozen=True)
class Actor:
    """Who acted: a user, a service, or both (a service acting for a user); neither: nobody
    signed in."""

    user_id: str = ""
    service: str = ""

    @classmethod
    def of(cls, caller: Caller) -> Actor:
        if caller.kind is CallerKind.USER:
            return cls(user_id=caller.subject, service=caller.acting_service)
        if caller.kind is CallerKind.SERVICE:
            return cls(service=caller.subject)
        return cls()


NOBODY = Actor()


async def record(
    outbox: Outbox,
    session: AsyncConnection,
    action: str,
    *,
    target: str = "",
    details: Mapping[str, object] | None = None,
    actor: Actor | None = None,
    origin: ClientOrigin | None = None,
) -> Event:
    """Write the security event ``action`` into ``session``'s transaction. ``actor`` and
    ``origin`` default to the current call's caller and client."""
    actor = actor if actor is not None else Actor.of(current_caller())
    origin = origin if origin is not None else current_origin()
    message = audit_pb2.AuditRecorded(
        action=action,
        actor_user_id=actor.user_id,
        actor_service=actor.service,
        target=target,
        client_address=origin.ip,
        user_agent=origin.user_agent[:USER_AGENT_MAX_LENGTH],
        details={key: str(value)[:_DETAIL_MAX_LENGTH] for key, value in (details or {}).items()},
    )
    return await outbox.add(session, AUDIT_RECORDED, message, user_id=actor.user_id)


def user_target(user_id: object) -> str:
    return f"users/{user_id}"
