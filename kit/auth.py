"""Who is calling: the caller context every RPC runs with, and service credentials.

The auth interceptor puts a ``Caller`` in a contextvar for the duration of an RPC;
handlers read it with ``current_caller()``. Services talk to each other with a short
-lived service token: a JWT naming the calling identity, signed with that identity's own
private key and checked against its public key (kit/service_keys.py), which no user and no
other service can produce. A service token may also name a user the service acts for, on
the USER RPCs that declare it (docs/security.md). User access tokens are checked by a
``UserTokenVerifier`` plugged in by the process (the users service publishes the keys).
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable

import jwt

from kit.errors import Forbidden, Unauthenticated, ValidationError
from kit.service_keys import (
    PublicKeySet,
    SigningIdentity,
    load_public_keys,
    load_signing_identity,
    require_service_keys,
)
from kit.settings import PlatformSettings

SERVICE_TOKEN_AUDIENCE = "stylestudio-internal"
SERVICE_TOKEN_ISSUER = "stylestudio-services"
SERVICE_TOKEN_TYPE = "svc"


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
    # A user caller whose call a service makes on their behalf: that service's identity.
    acting_service: str = ""

    @property
    def is_admin(self) -> bool:
        # An admin's API key is not an admin credential: a leaked key must not reach admin powers;
        # and a service acting for an admin gets the user's plan, never the admin's powers.
        return (
            self.kind is CallerKind.USER
            and self.role == "admin"
            and not self.api_key_id
            and not self.acting_service
        )

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
    """The user an RPC acts for. An INTERNAL RPC's callers are services, each one declared for
    that RPC in the protos, and they name the user in the request; a user (signed in, or acted
    for by a service allowed to) always acts for themself."""
    caller = current_caller()
    if caller.is_service:
        if not requested_user_id:
            raise ValidationError("A service call must name the user it acts for", field="user_id")
        return requested_user_id
    return caller.user_id


UserTokenVerifier = Callable[[str], Awaitable[Caller]]
"""Turns a bearer credential (access token or API key) into a user Caller, or raises Unauthenticated."""


@dataclasses.dataclass(frozen=True, slots=True)
class ServicePrincipal:
    """Who a verified service credential proves: an identity, and the user it acts for if any."""

    identity: str
    on_behalf_of: str = ""


class ServiceCredentials:
    """Mints this process's service tokens with its own key; verifies others' with public keys."""

    def __init__(
        self, signing: SigningIdentity, public_keys: PublicKeySet | None = None, ttl_seconds: int = 300
    ) -> None:
        self._signing = signing
        self._public_keys = public_keys or PublicKeySet({})
        self._ttl = ttl_seconds
        # Minted tokens by the user they act for ("" for the service itself), reused for minutes.
        self._minted: dict[str, tuple[str, float]] = {}
        # Tokens already verified, with their expiry: a peer reuses its token for minutes,
        # so each is checked once instead of on every call.
        self._verified: dict[str, tuple[ServicePrincipal, float]] = {}

    @classmethod
    def from_settings(
        cls, settings: PlatformSettings, identity: str, verifies: bool = True
    ) -> ServiceCredentials:
        """This process's credentials; refuses (production) missing or development keys, and a
        key set that does not list this process's own key under its identity."""
        require_service_keys(settings, verifies)
        signing = load_signing_identity(settings, identity)
        public_keys = load_public_keys(settings) if verifies else None
        if public_keys is not None and signing.kid not in public_keys.kids_of(identity):
            raise ValueError(
                f"STYLESTUDIO_SERVICE_PUBLIC_KEYS does not list the public key of this process's "
                f"STYLESTUDIO_SERVICE_PRIVATE_KEY under {identity!r}"
            )
        return cls(signing, public_keys, settings.service_token_ttl_seconds)

    @property
    def identity(self) -> str:
        return self._signing.identity

    def token(self, on_behalf_of: str = "") -> str:
        """A service token (acting for ``on_behalf_of`` if given), reused until a minute before it expires."""
        now = time.time()
        cached = self._minted.get(on_behalf_of)
        if cached and cached[1] - 60 > now:
            return cached[0]
        expires = now + self._ttl
        claims: dict[str, object] = {
            "iss": SERVICE_TOKEN_ISSUER,
            "aud": SERVICE_TOKEN_AUDIENCE,
            "sub": self._signing.identity,
            "iat": int(now),
            "exp": int(expires),
        }
        if on_behalf_of:
            claims["on_behalf_of"] = on_behalf_of
        headers = {"typ": SERVICE_TOKEN_TYPE, "kid": self._signing.kid}
        token = jwt.encode(
            claims, self._signing.private_key, algorithm=self._signing.algorithm, headers=headers
        )
        if len(self._minted) >= _MAX_CACHED_TOKENS:
            self._minted.clear()
        self._minted[on_behalf_of] = (token, expires)
        return token

    def metadata(self, on_behalf_of: str = "") -> tuple[tuple[str, str]]:
        """gRPC metadata presenting this process's credential (acting for a user if given)."""
        return (("authorization", f"Bearer {self.token(on_behalf_of)}"),)

    def verify(self, token: str) -> ServicePrincipal | None:
        """Who a valid service token proves; None if ``token`` is not a service token at all."""
        known = self._verified.get(token)
        if known is not None:
            if known[1] > time.time():
                return known[0]
            del self._verified[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        if header.get("typ") != SERVICE_TOKEN_TYPE:
            return None
        kid = header.get("kid")
        accepted = self._public_keys.get(kid) if isinstance(kid, str) else None
        # The algorithm is the key's, never the token's say: an HS256 token "signed" with a
        # public key, or the old shared secret's tokens, fail here.
        if accepted is None or header.get("alg") != accepted.algorithm:
            raise Unauthenticated("Invalid service credential")
        try:
            claims = jwt.decode(
                token,
                accepted.key,
                algorithms=[accepted.algorithm],
                audience=SERVICE_TOKEN_AUDIENCE,
                issuer=SERVICE_TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid service credential") from error
        on_behalf_of = claims.get("on_behalf_of", "")
        # A key proves one identity: a service cannot sign a token that names another.
        if claims["sub"] != accepted.identity or not isinstance(on_behalf_of, str):
            raise Unauthenticated("Invalid service credential")
        principal = ServicePrincipal(accepted.identity, on_behalf_of)
        if len(self._verified) >= _MAX_CACHED_TOKENS:
            self._verified.clear()  # a handful of peers in practice: only a flood of fresh tokens gets here
        self._verified[token] = (principal, float(claims["exp"]))
        return principal


_MAX_CACHED_TOKENS = 1024
