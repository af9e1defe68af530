"""A service identity: its name, the private key only it holds, and the credentials it signs.

The platform knows each identity by name and accepts its public key (docs/security.md). A
credential is a JWT the identity signs itself: ``typ`` ``svc``, ``kid`` the key's fingerprint,
``sub`` the identity, valid five minutes and reused until a minute before it expires; acting for
a user, it also names the user (``on_behalf_of``). The verifier (the platform's kit/auth.py)
fixes the audience, issuer and key id rule that this module follows.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

AUDIENCE = "stylestudio-internal"
ISSUER = "stylestudio-services"
TOKEN_TYPE = "svc"
TOKEN_TTL_SECONDS = 300
# A token is reused until this long before it expires: a call never leaves with one that
# could expire in flight.
REUSE_MARGIN_SECONDS = 60

IDENTITY_VARIABLE = "STYLESTUDIO_SERVICE_IDENTITY"
PRIVATE_KEY_VARIABLE = "STYLESTUDIO_SERVICE_PRIVATE_KEY"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class ServiceIdentity:
    """Signs this identity's credentials; one per process, shared by all its channels."""

    def __init__(self, name: str, private_key: PrivateKey) -> None:
        if not name:
            raise ValueError("a service identity needs a name")
        self.name = name
        self._key = private_key
        self._algorithm = _algorithm_of(private_key)
        self._minted: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_pem(cls, name: str, pem: str | bytes) -> ServiceIdentity:
        """``pem``: a PKCS#8 private key (a literal ``\\n`` may stand for each line break)."""
        text = pem.decode() if isinstance(pem, bytes) else pem
        key = serialization.load_pem_private_key(text.replace("\\n", "\n").encode(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("a service key must be Ed25519 or EC P-256")
        return cls(name, key)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServiceIdentity:
        """The identity named by STYLESTUDIO_SERVICE_IDENTITY, with the key in
        STYLESTUDIO_SERVICE_PRIVATE_KEY (PEM text, or the path of a PEM file)."""
        name = environ.get(IDENTITY_VARIABLE, "").strip()
        value = environ.get(PRIVATE_KEY_VARIABLE, "").strip()
        if not name or not value:
            raise ValueError(f"set {IDENTITY_VARIABLE} and {PRIVATE_KEY_VARIABLE}")
        pem = value if value.startswith("-----BEGIN") else Path(value).read_text()
        return cls.from_pem(name, pem)

    @classmethod
    def generate(cls, name: str) -> ServiceIdentity:
        """A fresh Ed25519 key for ``name``."""
        return cls(name, ed25519.Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        """The key's fingerprint (SHA-256 of its SubjectPublicKeyInfo), the platform's ``kid``."""
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode()

    def public_pem(self) -> str:
        """What the platform's operators add under this identity in STYLESTUDIO_SERVICE_PUBLIC_KEYS."""
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def private_pem(self) -> str:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def token(self, on_behalf_of: str = "") -> str:
        """A credential for this identity, acting for the user ``on_behalf_of`` when given."""
        now = time.time()
        cached = self._minted.get(on_behalf_of)
        if cached and cached[1] - REUSE_MARGIN_SECONDS > now:
            return cached[0]
        expires = now + TOKEN_TTL_SECONDS
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": self.name,
            "iat": int(now),
            "exp": int(expires),
        }
        if on_behalf_of:
            claims["on_behalf_of"] = on_behalf_of
        headers = {"typ": TOKEN_TYPE, "kid": self.key_id}
        token = jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)
        if len(self._minted) >= _MAX_CACHED_TOKENS:
            self._minted.clear()
        self._minted[on_behalf_of] = (token, expires)
        return token

    def metadata(self, on_behalf_of: str = "") -> tuple[tuple[str, str]]:
        """gRPC metadata presenting the credential, for a channel that does not add it itself."""
        return (("authorization", f"Bearer {self.token(on_behalf_of)}"),)


_MAX_CACHED_TOKENS = 1024


def _algorithm_of(key: PrivateKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("a service key must be Ed25519 or EC P-256")
