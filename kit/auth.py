"""Who is calling: the caller context every RPC runs with, and service credentials.

The auth interceptor puts a ``Caller`` in a contextvar for the duration of an RPC;
handlers read it with ``current_caller()``. Services talk to each other with a short
-lived service token (a JWT signed with the platform's service secret, audience
``stylestudio-internal``), which no user can obtain. User access tokens are checked
by a ``UserTokenVerifier`` plugged in by the process (the users service publishes
the keys; see issue "Users service").
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable

import jwt

from kit.errors import Forbidden, Unauthenticated

SERVICE_TOKEN_AUDIENCE = "stylestudio-internal"
SERVICE_TOKEN_ISSUER = "stylestudio-services"
SERVICE_TOKEN_ALGORITHM = "HS256"


class CallerKind(enum.StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    SERVICE = "service"


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    kind: CallerKind
    # user id for users, service name for services
    subject: str = ""
    plan: str = ""
    role: str = ""
    session_id: str = ""
    api_key_id: str = ""

    @property
    def is_admin(self) -> bool:
        # An admin's API key is not an admin credential: a leaked key must not reach admin powers.
        return self.kind is CallerKind.USER and self.role == "admin" and not self.api_key_id

    @property
    def is_api_key(self) -> bool:
        return self.kind is CallerKind.USER and bool(self.api_key_id)

    @property
    def is_service(self) -> bool:
        return self.kind is CallerKind.SERVICE

    @property
    def user_id(self) -> str:
        if self.kind is not CallerKind.USER:
            raise Forbidden("This call needs a signed-in user")
        return self.subject


ANONYMOUS = Caller(kind=CallerKind.ANONYMOUS)

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("stylestudio_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    return _caller.get()


def bind_caller(caller: Caller) -> contextvars.Token[Caller]:
    return _caller.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _caller.reset(token)


def user_id_for(requested_user_id: str) -> str:
    """The user an RPC acts for: a service names one; a user always acts for themself."""
    caller = current_caller()
    if caller.is_service:
        if not requested_user_id:
            raise Unauthenticated("A service call must name the user it acts for")
        return requested_user_id
    return caller.user_id


UserTokenVerifier = Callable[[str], Awaitable[Caller]]
"""Turns a bearer credential (access token or API key) into a user Caller, or raises Unauthenticated."""


class ServiceCredentials:
    """Mints and verifies the tokens services present to each other."""

    def __init__(self, secret: str, service_name: str, ttl_seconds: int = 300) -> None:
        if len(secret) < 16:
            raise ValueError("the service secret must be at least 16 characters")
        self._secret = secret
        self._service_name = service_name
        self._ttl = ttl_seconds
        self._cached: tuple[str, float] | None = None
        # Tokens already verified, with their expiry: a peer reuses its token for minutes,
        # so each is checked once instead of on every call (a JWT decode costs ~30 us).
        self._verified: dict[str, tuple[Caller, float]] = {}

    def token(self) -> str:
        """A service token, reused until a minute before it expires."""
        now = time.time()
        if self._cached and self._cached[1] - 60 > now:
            return self._cached[0]
        expires = now + self._ttl
        claims = {
            "iss": SERVICE_TOKEN_ISSUER,
            "aud": SERVICE_TOKEN_AUDIENCE,
            "sub": self._service_name,
            "iat": int(now),
            "exp": int(expires),
        }
        token = jwt.encode(claims, self._secret, algorithm=SERVICE_TOKEN_ALGORITHM, headers={"typ": "svc"})
        self._cached = (token, expires)
        return token

    def verify(self, token: str) -> Caller | None:
        """The service Caller if ``token`` is a valid service token; None if it is not one at all."""
        known = self._verified.get(token)
        if known is not None:
            if known[1] > time.time():
                return known[0]
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("typ") != "svc":
            return None
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[SERVICE_TOKEN_ALGORITHM],
                audience=SERVICE_TOKEN_AUDIENCE,
                issuer=SERVICE_TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid service credential") from error
        caller = Caller(kind=CallerKind.SERVICE, subject=str(claims["sub"]))
        if len(self._verified) >= _MAX_VERIFIED_TOKENS:
            self._verified.clear()  # a handful of peers in practice: only a flood of fresh tokens gets here
        self._verified[token] = (caller, float(claims["exp"]))
        return caller


_MAX_VERIFIED_TOKENS = 1024
