"""OAuth sign-in with Google (OpenID Connect) and GitHub, through authlib.

Start: a random state and PKCE verifier (and, for OIDC, a nonce) are kept in Redis for
a few minutes under the state's hash; the browser goes to the provider's consent page.
Complete: the state is taken out of Redis atomically (single use, bound to the provider),
the code is exchanged with the verifier, and the person is identified: by the signed ID
token for Google (signature from the provider's JWKS, issuer, audience, expiry, nonce),
by the API for GitHub (only a primary, verified email counts).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from redis.asyncio import Redis

with warnings.catch_warnings():
    # authlib prefers the httpx2 fork but drives httpx the same way; we use httpx.
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client, OAuthError

from kit.errors import ProviderUnavailable, Unauthenticated, ValidationError
from services.users.settings import UsersSettings

PROVIDERS = ("google", "github")
_ID_TOKEN_ALGORITHMS = ["RS256", "ES256"]


@dataclass(frozen=True)
class ProviderIdentity:
    """Who the provider says signed in."""

    provider: str
    subject: str
    email: str
    email_verified: bool
    name: str
    picture: str


@dataclass(frozen=True)
class _Provider:
    name: str
    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    scope: str


class OAuthSignIn:
    def __init__(self, settings: UsersSettings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._state_prefix = f"{settings.redis_prefix}:users:oauth-state"
        self._google_keys: dict[str, Any] = {}

    def _provider(self, name: str) -> _Provider:
        s = self._settings
        if name == "google":
            provider = _Provider(
                "google",
                s.google_client_id,
                s.google_client_secret.get_secret_value(),
                s.google_authorize_url,
                s.google_token_url,
                "openid email profile",
            )
        elif name == "github":
            provider = _Provider(
                "github",
                s.github_client_id,
                s.github_client_secret.get_secret_value(),
                s.github_authorize_url,
                s.github_token_url,
                "read:user user:email",
            )
        else:
            raise ValidationError(f"Provider must be one of {', '.join(PROVIDERS)}", field="provider")
        if not provider.client_id:
            raise ValidationError(f"Sign-in with {name} is not configured", field="provider")
        return provider

    def _client(self, provider: _Provider) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=provider.client_id,
            client_secret=provider.client_secret,
            scope=provider.scope,
            redirect_uri=self._settings.oauth_redirect_uri.replace("{provider}", provider.name),
            code_challenge_method="S256",
            timeout=self._settings.oauth_http_timeout_seconds,
        )

    def _state_key(self, state: str) -> str:
        return f"{self._state_prefix}:{hashlib.sha256(state.encode()).hexdigest()}"

    async def start(self, provider_name: str) -> tuple[str, str]:
        """The consent page URL and the state the callback must bring back."""
        provider = self._provider(provider_name)
        state, verifier, nonce = (
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),
            secrets.token_urlsafe(16),
        )
        extra = {"nonce": nonce} if provider.name == "google" else {}
        async with self._client(provider) as client:
            url, _ = client.create_authorization_url(
                provider.authorize_url, state=state, code_verifier=verifier, **extra
            )
        pending = json.dumps({"provider": provider.name, "verifier": verifier, "nonce": nonce})
        await self._redis.set(self._state_key(state), pending, ex=self._settings.oauth_state_ttl_seconds)
        return url, state

    async def complete(self, provider_name: str, code: str, state: str) -> ProviderIdentity:
        provider = self._provider(provider_name)
        if not code:
            raise ValidationError("The authorization code is missing", field="code")
        raw = await self._redis.getdel(self._state_key(state)) if state else None
        pending = json.loads(raw) if raw else None
        if pending is None or pending["provider"] != provider.name:
            raise ValidationError("The sign-in state is unknown, expired or already used", field="state")
        async with self._client(provider) as client:
            try:
                token = await client.fetch_token(
                    provider.token_url,
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending["verifier"],
                )
            except OAuthError as error:
                raise Unauthenticated(
                    f"{provider.name} refused the authorization code", details={"error": error.error}
                ) from error
            except (httpx.HTTPError, ValueError) as error:
                raise ProviderUnavailable(f"{provider.name} did not answer the code exchange") from error
            try:
                if provider.name == "google":
                    return await self._google_identity(client, token, pending["nonce"])
                return await self._github_identity(client)
            except (httpx.HTTPError, ValueError, KeyError) as error:
                raise ProviderUnavailable(f"{provider.name} did not say who signed in") from error

    async def _google_identity(
        self, client: AsyncOAuth2Client, token: dict[str, Any], nonce: str
    ) -> ProviderIdentity:
        id_token = token.get("id_token")
        if not id_token:
            raise Unauthenticated("google returned no ID token")
        claims = await self._verify_id_token(client, id_token)
        if claims.get("nonce") != nonce:
            raise Unauthenticated("google's ID token was not issued for this sign-in")
        profile = (await client.get(self._settings.google_userinfo_url)).raise_for_status().json()
        if str(profile.get("sub")) != str(claims["sub"]):
            raise Unauthenticated("google's user info does not match the ID token")
        return ProviderIdentity(
            provider="google",
            subject=str(claims["sub"]),
            email=str(claims.get("email") or ""),
            email_verified=claims.get("email_verified") in (True, "true"),
            name=str(profile.get("name") or claims.get("name") or ""),
            picture=str(profile.get("picture") or claims.get("picture") or ""),
        )

    async def _verify_id_token(self, client: AsyncOAuth2Client, id_token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid", "")
        except jwt.PyJWTError as error:
            raise Unauthenticated("google's ID token is malformed") from error
        if kid not in self._google_keys:
            # Unknown key id: the provider rotated; fetch its keys again.
            jwks = (await client.get(self._settings.google_jwks_url)).raise_for_status().json()
            self._google_keys = {
                jwk["kid"]: jwt.PyJWK(jwk).key for jwk in jwks.get("keys", []) if "kid" in jwk
            }
        if kid not in self._google_keys:
            raise Unauthenticated("google's ID token is signed with an unknown key")
        try:
            return jwt.decode(
                id_token,
                self._google_keys[kid],
                algorithms=_ID_TOKEN_ALGORITHMS,
                audience=self._settings.google_client_id,
                issuer=self._settings.google_issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated("google's ID token is not valid") from error

    async def _github_identity(self, client: AsyncOAuth2Client) -> ProviderIdentity:
        api = self._settings.github_api_url.rstrip("/")
        headers = {"Accept": "application/vnd.github+json"}
        profile = (await client.get(f"{api}/user", headers=headers)).raise_for_status().json()
        emails = (await client.get(f"{api}/user/emails", headers=headers)).raise_for_status().json()
        primary = next((e for e in emails if e.get("primary") and e.get("verified")), None)
        return ProviderIdentity(
            provider="github",
            subject=str(profile["id"]),
            email=str(primary["email"]) if primary else "",
            email_verified=primary is not None,
            name=str(profile.get("name") or profile.get("login") or ""),
            picture=str(profile.get("avatar_url") or ""),
        )
