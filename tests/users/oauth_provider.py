"""A local OAuth 2.0 / OpenID Connect provider speaking Google's and GitHub's wire format.

Real HTTP on 127.0.0.1: an authorize endpoint that redirects with a code (the person who
"consents" is whoever the test put in ``next_person``), a token endpoint that checks the
client's secret, the redirect URI and the PKCE verifier and accepts each code once,
Google's userinfo and JWKS with RS256-signed ID tokens, GitHub's /user and /user/emails.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.harness import free_port

GOOGLE_CLIENT = ("google-client-id", "google-client-secret")
GITHUB_CLIENT = ("github-client-id", "github-client-secret")


@dataclass
class Person:
    subject: str
    email: str
    name: str
    email_verified: bool = True
    picture: str = "https://images.example.com/me.png"


@dataclass
class _Grant:
    provider: str
    person: Person
    redirect_uri: str
    challenge: str
    nonce: str


@dataclass
class LocalOAuthProvider:
    port: int = field(default_factory=free_port)
    next_person: dict[str, Person] = field(default_factory=dict)
    key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    kid: str = "local-google-1"
    # Tests flip this to sign ID tokens with a key the JWKS does not publish.
    forge_id_token: bool = False
    _codes: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, Person] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/google"

    def env(self) -> dict[str, str]:
        """The users service's settings that point it at this provider."""
        return {
            "STYLESTUDIO_GOOGLE_CLIENT_ID": GOOGLE_CLIENT[0],
            "STYLESTUDIO_GOOGLE_CLIENT_SECRET": GOOGLE_CLIENT[1],
            "STYLESTUDIO_GOOGLE_AUTHORIZE_URL": f"{self.url}/google/authorize",
            "STYLESTUDIO_GOOGLE_TOKEN_URL": f"{self.url}/google/token",
            "STYLESTUDIO_GOOGLE_USERINFO_URL": f"{self.url}/google/userinfo",
            "STYLESTUDIO_GOOGLE_JWKS_URL": f"{self.url}/google/jwks",
            "STYLESTUDIO_GOOGLE_ISSUER": self.issuer,
            "STYLESTUDIO_GITHUB_CLIENT_ID": GITHUB_CLIENT[0],
            "STYLESTUDIO_GITHUB_CLIENT_SECRET": GITHUB_CLIENT[1],
            "STYLESTUDIO_GITHUB_AUTHORIZE_URL": f"{self.url}/github/login/oauth/authorize",
            "STYLESTUDIO_GITHUB_TOKEN_URL": f"{self.url}/github/login/oauth/access_token",
            "STYLESTUDIO_GITHUB_API_URL": f"{self.url}/github/api",
            "STYLESTUDIO_OAUTH_REDIRECT_URI": "http://127.0.0.1:3000/auth/callback/{provider}",
        }

    async def start(self) -> None:
        app = Starlette(
            routes=[
                Route("/google/authorize", self._authorize("google")),
                Route("/github/login/oauth/authorize", self._authorize("github")),
                Route("/google/token", self._token("google", GOOGLE_CLIENT), methods=["POST"]),
                Route(
                    "/github/login/oauth/access_token", self._token("github", GITHUB_CLIENT), methods=["POST"]
                ),
                Route("/google/userinfo", self._google_userinfo),
                Route("/google/jwks", self._google_jwks),
                Route("/github/api/user", self._github_user),
                Route("/github/api/user/emails", self._github_emails),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task

    def _authorize(self, provider: str) -> Any:
        client_id = GOOGLE_CLIENT[0] if provider == "google" else GITHUB_CLIENT[0]

        async def authorize(request: Request) -> Response:
            q = request.query_params
            if q.get("client_id") != client_id or q.get("response_type") != "code":
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
                return JSONResponse({"error": "invalid_request", "error_description": "PKCE"}, 400)
            person = self.next_person.pop(provider)
            code = secrets.token_urlsafe(16)
            self._codes[code] = _Grant(
                provider, person, q["redirect_uri"], q["code_challenge"], q.get("nonce", "")
            )
            query = urlencode({"code": code, "state": q.get("state", "")})
            return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=302)

        return authorize

    def _token(self, provider: str, client: tuple[str, str]) -> Any:
        async def token(request: Request) -> Response:
            form = await request.form()
            if _client_credentials(request, form) != client:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = self._codes.pop(str(form.get("code", "")), None)  # a code works once
            if grant is None or grant.provider != provider or form.get("grant_type") != "authorization_code":
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            if form.get("redirect_uri") != grant.redirect_uri:
                return JSONResponse({"error": "invalid_grant", "error_description": "redirect_uri"}, 400)
            verifier = str(form.get("code_verifier", ""))
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
            if challenge.decode() != grant.challenge:
                return JSONResponse({"error": "invalid_grant", "error_description": "PKCE"}, 400)
            access = secrets.token_urlsafe(16)
            self._access[access] = grant.person
            body: dict[str, Any] = {"access_token": access, "token_type": "bearer", "scope": "openid"}
            if provider == "google":
                body["expires_in"] = 3599
                body["id_token"] = self._id_token(grant)
            return JSONResponse(body)

        return token

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": GOOGLE_CLIENT[0],
            "sub": grant.person.subject,
            "email": grant.person.email,
            "email_verified": grant.person.email_verified,
            "name": grant.person.name,
            "nonce": grant.nonce,
            "iat": now,
            "exp": now + 3600,
        }
        key = rsa.generate_private_key(65537, 2048) if self.forge_id_token else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": self.kid})

    def _person(self, request: Request) -> Person | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return self._access.get(token) if scheme.lower() in ("bearer", "token") else None

    async def _google_userinfo(self, request: Request) -> Response:
        person = self._person(request)
        if person is None:
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse(
            {
                "sub": person.subject,
                "email": person.email,
                "email_verified": person.email_verified,
                "name": person.name,
                "picture": person.picture,
            }
        )

    async def _google_jwks(self, request: Request) -> Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return JSONResponse({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    async def _github_user(self, request: Request) -> Response:
        person = self._person(request)
        if person is None:
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return JSONResponse(
            {
                "id": int(person.subject),
                "login": person.name.lower(),
                "name": person.name,
                "avatar_url": person.picture,
                "email": None,
            }
        )

    async def _github_emails(self, request: Request) -> Response:
        person = self._person(request)
        if person is None:
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return JSONResponse(
            [
                {"email": "noreply@users.noreply.github.com", "primary": False, "verified": True},
                {"email": person.email, "primary": True, "verified": person.email_verified},
            ]
        )


def _client_credentials(request: Request, form: Any) -> tuple[str, str]:
    """client_secret_basic (authlib's default) or client_secret_post."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        from urllib.parse import unquote

        client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        return unquote(client_id), unquote(secret)
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))
