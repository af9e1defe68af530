"""User credentials every service verifies: access tokens (ES256 JWTs) and API keys.

The users service signs access tokens with its current key and publishes every
key still in use as a JWKS (AuthService.GetJwks). Every other service verifies
tokens locally with those public keys, fetched once and refetched when a token
names a key id it has not seen (rotation without downtime; rate-limited so a
stream of bogus kids cannot hammer the users service) or when they are older than
five minutes (a key no longer published stops being trusted). API keys ("sk_...") are
resolved by the users service (AuthService.AuthenticateApiKey), cached briefly.

What a credential says is then brought up to date (kit/credential_state.py): the Caller
carries the user's current role and plan, tokens of ended sessions and of accounts that
no longer exist are refused, and a cached API-key answer is asked again as soon as its
owner's credentials changed (a deleted key, a new plan).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kit.auth import Caller, CallerKind
from kit.credential_state import CredentialState, CredentialStates, CredentialStateStore
from kit.errors import DependencyUnavailable, DomainError, Unauthenticated, from_rpc_error

log = logging.getLogger("stylestudio.tokens")

ACCESS_TOKEN_ISSUER = "stylestudio-users"
ACCESS_TOKEN_AUDIENCE = "stylestudio"
ACCESS_TOKEN_ALGORITHM = "ES256"
ACCESS_TOKEN_TYPE = "at+jwt"
API_KEY_PREFIX = "sk_"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
            "kid": self.kid,
            "alg": ACCESS_TOKEN_ALGORITHM,
            "use": "sig",
        }

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def generate_signing_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or uuid.uuid4().hex[:16], ec.generate_private_key(ec.SECP256R1()))


def signing_keys_from_json(document: str) -> list[SigningKey]:
    """``[{"kid": ..., "pem": ...}, ...]``; the first key signs, all of them verify."""
    keys = []
    for entry in json.loads(document):
        private = serialization.load_pem_private_key(entry["pem"].encode(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {entry['kid']} is not an EC key")
        keys.append(SigningKey(entry["kid"], private))
    return keys


def signing_keys_to_json(keys: Sequence[SigningKey]) -> str:
    return json.dumps([{"kid": key.kid, "pem": key.private_pem()} for key in keys])


def sign_access_token(
    key: SigningKey,
    *,
    user_id: str,
    plan: str,
    role: str,
    session_id: str = "",
    ttl_seconds: int = 900,
    now: float | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": ACCESS_TOKEN_ISSUER,
        "aud": ACCESS_TOKEN_AUDIENCE,
        "sub": user_id,
        "plan": plan,
        "role": role,
        "sid": session_id,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    headers = {"kid": key.kid, "typ": ACCESS_TOKEN_TYPE}
    return jwt.encode(claims, key.private_key, algorithm=ACCESS_TOKEN_ALGORITHM, headers=headers)


JwksSource = Callable[[], Awaitable[Sequence[dict[str, str]]]]


class AccessTokenVerifier:
    """Verifies access tokens against the users service's published keys."""

    def __init__(
        self, source: JwksSource, min_refresh_seconds: float = 5.0, max_age_seconds: float = 300.0
    ) -> None:
        self._source = source
        self._keys: dict[str, Any] = {}
        self._min_refresh = min_refresh_seconds
        # Keys are re-read at least this often, so a key the users service stopped publishing
        # (retired or revoked) stops being trusted here too, without a restart.
        self._max_age = max_age_seconds
        self._last_refresh = float("-inf")
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._verified: dict[str, tuple[Caller, float]] = {}
        self._max_cached = 10_000

    async def verify(self, token: str) -> Caller:
        # A token is immutable and carries its expiry: one signature check per token is enough.
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        caller, expires_at = await self._verify(token)
        if len(self._verified) >= self._max_cached:
            self._verified.clear()
        self._verified[token] = (caller, expires_at)
        return caller

    async def _verify(self, token: str) -> tuple[Caller, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid access token") from error
        kid = header.get("kid")
        if header.get("alg") != ACCESS_TOKEN_ALGORITHM or not isinstance(kid, str) or not kid:
            raise Unauthenticated("Invalid access token")
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ACCESS_TOKEN_ALGORITHM],
                audience=ACCESS_TOKEN_AUDIENCE,
                issuer=ACCESS_TOKEN_ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated("Access token expired") from error
        except jwt.PyJWTError as error:
            raise Unauthenticated("Invalid access token") from error
        caller = Caller(
            kind=CallerKind.USER,
            subject=str(claims["sub"]),
            plan=str(claims.get("plan", "")),
            role=str(claims.get("role", "")),
            session_id=str(claims.get("sid", "")),
        )
        return caller, float(claims["exp"])

    async def _key(self, kid: str) -> Any:
        if kid in self._keys and time.monotonic() - self._fetched_at < self._max_age:
            return self._keys[kid]
        async with self._lock:
            now = time.monotonic()
            stale = now - self._fetched_at >= self._max_age
            if (kid not in self._keys or stale) and now - self._last_refresh >= self._min_refresh:
                self._last_refresh = now
                try:
                    jwks = await self._source()
                except (grpc.RpcError, DomainError, OSError) as error:
                    if kid in self._keys:  # the users service is unreachable: the keys we had stand
                        return self._keys[kid]
                    raise Unauthenticated("Cannot verify access token right now") from error
                self._keys = {jwk["kid"]: jwt.PyJWK(dict(jwk), ACCESS_TOKEN_ALGORITHM).key for jwk in jwks}
                self._fetched_at = now
                # Tokens verified with a key that is no longer published are checked again.
                self._verified.clear()
        if kid not in self._keys:
            raise Unauthenticated("Invalid access token")
        return self._keys[kid]


ApiKeyResolver = Callable[[str], Awaitable[tuple[Caller, int]]]
"""A key's Caller (owner, current plan and role, key id) and the owner's credentials version."""


class ApiKeyVerifier:
    """Resolves "sk_..." keys through the users service, caching answers for a few seconds.

    A cached answer stands only while its owner's credential state is no newer than it:
    deleting a key or changing the owner's plan or role bumps that version, so the next
    call asks the users service again (within ``credential_state_cache_seconds``).
    """

    def __init__(
        self, resolve: ApiKeyResolver, cache_seconds: float = 10.0, max_entries: int = 10**4
    ) -> None:
        self._resolve = resolve
        self._cache: dict[str, tuple[Caller, int, float]] = {}
        self._ttl = cache_seconds
        self._max = max_entries

    async def verify(self, secret: str, states: CredentialStates) -> Caller:
        cached = self._cache.get(secret)
        if cached and cached[2] > time.monotonic():
            caller, version, _ = cached
            state = await states.current(caller.subject)
            if state.exists and state.version <= version:
                return caller
        caller, version = await self._resolve(secret)
        if self._ttl > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[secret] = (caller, version, time.monotonic() + self._ttl)
        return caller


BearerVerifier = Callable[[str], Awaitable[Caller]]


def bearer_verifier(
    access_tokens: AccessTokenVerifier, api_keys: ApiKeyVerifier, states: CredentialStates
) -> BearerVerifier:
    async def verify(token: str) -> Caller:
        if token.startswith(API_KEY_PREFIX):
            return await api_keys.verify(token, states)
        claimed = await access_tokens.verify(token)
        return current_caller_for(claimed, await states.current(claimed.subject))

    return verify


def current_caller_for(claimed: Caller, state: CredentialState) -> Caller:
    """The Caller a verified access token stands for now: refused if its session or account
    ended, with the user's current role and plan instead of those signed into the token."""
    if not state.exists:
        raise Unauthenticated("This account no longer exists")
    if claimed.session_id and claimed.session_id in state.ended_sessions:
        raise Unauthenticated("This session has ended; sign in again")
    if claimed.role == state.role and claimed.plan == state.plan:
        return claimed
    return dataclasses.replace(claimed, role=state.role, plan=state.plan)


def users_service_states(
    channel_for_users: Callable[[], grpc.aio.Channel], store: CredentialStateStore, cache_seconds: float
) -> CredentialStates:
    """Credential states read from Redis; on a miss (or Redis down) asked of the users service."""
    from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc

    async def ask_users_service(user_id: str) -> CredentialState:
        stub = auth_pb2_grpc.AuthServiceStub(channel_for_users())
        try:
            found = await stub.GetCredentialState(auth_pb2.GetCredentialStateRequest(user_id=user_id))
        except grpc.aio.AioRpcError as error:
            # Neither Redis nor the users service can tell whether this credential was revoked.
            log.warning("credential state unavailable", extra={"code": error.code().name})
            raise DependencyUnavailable(
                "users", "Cannot check your credentials right now; try again shortly"
            ) from error
        return credential_state_from_message(found)

    return CredentialStates(store, ask_users_service, cache_seconds)


def credential_state_from_message(message: Any) -> CredentialState:
    return CredentialState(
        version=message.version,
        role=message.role,
        plan=message.plan,
        ended_sessions=frozenset(message.ended_session_ids),
        exists=message.exists,
    )


def users_service_verifier(
    channel_for_users: Callable[[], grpc.aio.Channel], states: CredentialStates
) -> BearerVerifier:
    """The verifier of every service but users: JWKS and API keys come from the users service."""
    from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc

    def stub() -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(channel_for_users())

    async def fetch_jwks() -> list[dict[str, str]]:
        try:
            response = await stub().GetJwks(auth_pb2.GetJwksRequest())
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, "users") from error  # unreachable: 503 naming users
        return [
            {"kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y, "kid": k.kid, "alg": k.alg, "use": k.use}
            for k in response.keys
        ]

    async def resolve_api_key(secret: str) -> tuple[Caller, int]:
        try:
            found = await stub().AuthenticateApiKey(auth_pb2.AuthenticateApiKeyRequest(secret=secret))
        except grpc.aio.AioRpcError as error:
            domain_error = from_rpc_error(error, "users")
            if isinstance(domain_error, DependencyUnavailable):
                raise domain_error from error  # 503: the key may well be valid
            if isinstance(domain_error, Unauthenticated) or error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise domain_error from error
            raise Unauthenticated("Cannot verify API key right now") from error
        caller = Caller(
            kind=CallerKind.USER,
            subject=found.user_id,
            plan=found.plan,
            role=found.role,
            api_key_id=found.key_id,
        )
        return caller, found.credentials_version

    return bearer_verifier(AccessTokenVerifier(fetch_jwks), ApiKeyVerifier(resolve_api_key), states)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
