"""Service identities and their keys: each process proves who it is with a key only it holds.

Every process of the platform has an identity: its service's name, ``gateway``, or
``operator`` (the operators' tools: benchmarks, support scripts). It signs its service
credentials (``kit.auth.ServiceCredentials``) with its own private key, Ed25519 (EdDSA) or
P-256 (ES256); verifiers hold public keys only, so a leaked service's configuration lets its
holder act as that service and never as another.

- ``STYLESTUDIO_SERVICE_PRIVATE_KEY``: this process's key, PKCS#8 PEM text (a literal ``\\n``
  may stand for each line break, for one-line ``.env`` files) or the path of a PEM file. Its
  key id is derived from the public key, so there is nothing else to keep in step.
- ``STYLESTUDIO_SERVICE_PUBLIC_KEYS``: the public keys accepted for every identity, JSON
  ``{"billing": ["-----BEGIN PUBLIC KEY-----...", ...], ...}`` or the path of such a file;
  an identity lists two keys while its key is rotated (docs/security.md).

Development: when a variable is empty, deterministic development keys derived from each
identity's name stand in, so ``make run`` needs no set-up. Production refuses to start with a
missing or a development key (``service_key_problems``, part of ``refuse_insecure_settings``).
``python -m kit.service_keys generate`` prints a fresh key per identity and the public key set.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from kit.settings import SERVICES, InsecureSettings, PlatformSettings

GATEWAY_IDENTITY = "gateway"
OPERATOR_IDENTITY = "operator"
IDENTITIES = (*SERVICES, GATEWAY_IDENTITY, OPERATOR_IDENTITY)

PRIVATE_KEY_VARIABLE = "STYLESTUDIO_SERVICE_PRIVATE_KEY"
PUBLIC_KEYS_VARIABLE = "STYLESTUDIO_SERVICE_PUBLIC_KEYS"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

_DEVELOPMENT_SEED = b"stylestudio development service key, never for production: "


def key_id(public_key: PublicKey) -> str:
    """A short fingerprint of the public key (SHA-256 of its SubjectPublicKeyInfo)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode()


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """The JWS algorithm a key signs with; only Ed25519 and P-256 keys are accepted."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ES256"
    raise ValueError("a service key must be Ed25519 or EC P-256")


@dataclass(frozen=True)
class SigningIdentity:
    """An identity and the private key it signs its credentials with."""

    identity: str
    private_key: PrivateKey

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def kid(self) -> str:
        return key_id(self.public_key)

    @property
    def algorithm(self) -> str:
        return algorithm_of(self.private_key)

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def public_pem(self) -> str:
        return public_pem(self.public_key)


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def generate_signing_identity(identity: str) -> SigningIdentity:
    return SigningIdentity(identity, ed25519.Ed25519PrivateKey.generate())


def development_key(identity: str) -> SigningIdentity:
    """The same key for ``identity`` on every machine: for development only, refused in production."""
    seed = hashlib.sha256(_DEVELOPMENT_SEED + identity.encode()).digest()
    return SigningIdentity(identity, ed25519.Ed25519PrivateKey.from_private_bytes(seed))


_DEVELOPMENT_KIDS = frozenset(development_key(identity).kid for identity in IDENTITIES)


def is_development_key(key: PrivateKey | PublicKey) -> bool:
    public = (
        key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    )
    return key_id(public) in _DEVELOPMENT_KIDS


@dataclass(frozen=True)
class AcceptedKey:
    identity: str
    key: PublicKey
    algorithm: str


class PublicKeySet:
    """The public keys a verifier accepts, by key id, each bound to the one identity it proves."""

    def __init__(self, keys: Mapping[str, Sequence[PublicKey]]) -> None:
        self._by_kid: dict[str, AcceptedKey] = {}
        for identity, public_keys in keys.items():
            for key in public_keys:
                kid = key_id(key)
                if kid in self._by_kid and self._by_kid[kid].identity != identity:
                    raise ValueError(f"{PUBLIC_KEYS_VARIABLE}: one key is listed for two identities")
                self._by_kid[kid] = AcceptedKey(identity, key, algorithm_of(key))

    def get(self, kid: str) -> AcceptedKey | None:
        return self._by_kid.get(kid)

    def kids_of(self, identity: str) -> set[str]:
        return {kid for kid, accepted in self._by_kid.items() if accepted.identity == identity}

    def accepted(self) -> Iterable[AcceptedKey]:
        return self._by_kid.values()

    @classmethod
    def from_json(cls, document: str) -> PublicKeySet:
        try:
            parsed = json.loads(document)
            if not isinstance(parsed, dict) or not all(
                isinstance(pems, list) and all(isinstance(pem, str) for pem in pems)
                for pems in parsed.values()
            ):
                raise ValueError("expected {identity: [PEM, ...]}")
            return cls({identity: [_load_public(pem) for pem in pems] for identity, pems in parsed.items()})
        except ValueError as error:
            raise ValueError(f"{PUBLIC_KEYS_VARIABLE} is not a valid key set: {error}") from None

    @classmethod
    def of(cls, signing: Iterable[SigningIdentity]) -> PublicKeySet:
        keys: dict[str, list[PublicKey]] = {}
        for identity in signing:
            keys.setdefault(identity.identity, []).append(identity.public_key)
        return cls(keys)


def public_keys_json(keys: Mapping[str, Sequence[PublicKey]]) -> str:
    return json.dumps({identity: [public_pem(key) for key in listed] for identity, listed in keys.items()})


def development_public_keys() -> PublicKeySet:
    return PublicKeySet.of(development_key(identity) for identity in IDENTITIES)


def load_signing_identity(settings: PlatformSettings, identity: str) -> SigningIdentity:
    """This process's key from STYLESTUDIO_SERVICE_PRIVATE_KEY, else (development) its development key."""
    value = settings.service_private_key.get_secret_value().strip()
    if not value:
        return development_key(identity)
    text = _pem_or_file(value, PRIVATE_KEY_VARIABLE)
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("not an Ed25519 or EC key")
        algorithm_of(key)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{PRIVATE_KEY_VARIABLE} is not a usable private key: {error}") from None
    return SigningIdentity(identity, key)


def load_public_keys(settings: PlatformSettings) -> PublicKeySet:
    """Every identity's accepted keys from STYLESTUDIO_SERVICE_PUBLIC_KEYS, else the development ones."""
    value = settings.service_public_keys.strip()
    if not value:
        return development_public_keys()
    if not value.startswith("{"):
        value = _read(Path(value), PUBLIC_KEYS_VARIABLE)
    return PublicKeySet.from_json(value)


def service_key_problems(settings: PlatformSettings, verifies: bool = True) -> list[str]:
    """What makes this process's service keys unfit for production, each naming its variable.

    ``verifies``: the process checks other identities' credentials (every service; the
    gateway only signs)."""
    problems = []
    if not settings.service_private_key.get_secret_value().strip():
        problems.append(f"{PRIVATE_KEY_VARIABLE} is not set (python -m kit.service_keys generate)")
    elif is_development_key(load_signing_identity(settings, "").private_key):
        problems.append(f"{PRIVATE_KEY_VARIABLE} is a development key, which anyone can derive")
    if verifies:
        if not settings.service_public_keys.strip():
            problems.append(f"{PUBLIC_KEYS_VARIABLE} is not set (python -m kit.service_keys generate)")
        elif any(is_development_key(accepted.key) for accepted in load_public_keys(settings).accepted()):
            problems.append(f"{PUBLIC_KEYS_VARIABLE} accepts a development key, which anyone can derive")
    return problems


def require_service_keys(settings: PlatformSettings, verifies: bool = True) -> None:
    """Refuse to start in production with missing or development service keys (the start-up
    check ``kit.settings.refuse_insecure_settings`` names them too; this one guards every place
    that makes credentials)."""
    if settings.is_production:
        problems = service_key_problems(settings, verifies)
        if problems:
            raise InsecureSettings(problems)


def _pem_or_file(value: str, variable: str) -> str:
    if value.startswith("-----BEGIN"):
        return value.replace("\\n", "\n")
    return _read(Path(value), variable)


def _read(path: Path, variable: str) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise ValueError(f"{variable}: cannot read {path}: {error.strerror}") from None


def _load_public(pem: str) -> PublicKey:
    key = serialization.load_pem_public_key(pem.replace("\\n", "\n").encode())
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("not an Ed25519 or EC public key")
    algorithm_of(key)
    return key


def _one_line(pem: str) -> str:
    return pem.strip().replace("\n", "\\n")


def env_lines(identities: Sequence[str] = IDENTITIES) -> list[str]:
    """A fresh key for each of ``identities`` and their public key set, as unquoted env-file lines
    (one line each: a literal ``\\n`` for each line break), for compose's ``.env`` or a Secret."""
    keys = [generate_signing_identity(identity) for identity in identities]
    lines = [f"STYLESTUDIO_{key.identity.upper()}_PRIVATE_KEY={_one_line(key.private_pem())}" for key in keys]
    public = {key.identity: [public_pem(key.public_key)] for key in keys}
    lines.append(f"{PUBLIC_KEYS_VARIABLE}={json.dumps(public, separators=(',', ':'))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stylestudio service-keys",
        description="Fresh Ed25519 service keys, as lines of an env file (one-line PEM values).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="a private key per identity and the public key set")
    generate.add_argument(
        "--identity",
        action="append",
        choices=IDENTITIES,
        help="only these identities (repeat; default: all). For a rotation: the one being rotated.",
    )
    args = parser.parse_args(argv)
    print("\n".join(env_lines(args.identity or IDENTITIES)))
    print(
        "# Each process gets its own line as STYLESTUDIO_SERVICE_PRIVATE_KEY; every process gets "
        f"{PUBLIC_KEYS_VARIABLE} (see docs/security.md).",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
