"""The keys access tokens are signed with, kept in the users schema so every replica agrees.

The newest key that is not retired signs. Rotation (``python -m services.users.admin
rotate-keys``) adds a key and retires the others; a retired key stays in the JWKS for
the lifetime of the tokens it signed (plus a margin for clocks and for replicas that
have not re-read the current key yet), so rotation never invalidates a live token.

Keys from ``STYLESTUDIO_JWT_SIGNING_KEYS`` are imported at start-up (the first listed
one last, so it becomes current on a fresh schema) and stay published while configured.

With ``STYLESTUDIO_SIGNING_KEY_PASSPHRASE`` set, private keys are stored as encrypted
PKCS#8 (cryptography's best available scheme), so a dump of the schema does not give
away the keys; keys stored in the clear before are encrypted at the next start-up.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import zlib
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from kit.db import Database
from kit.tokens import SigningKey, generate_signing_key, signing_keys_from_json
from services.users.models import signing_keys
from services.users.settings import UsersSettings

log = logging.getLogger("stylestudio.users.keys")

_ROTATION_LOCK = zlib.crc32(b"stylestudio-users-signing-keys")


class KeyStore:
    def __init__(self, db: Database, settings: UsersSettings) -> None:
        self._db = db
        self._settings = settings
        configured = settings.jwt_signing_keys.get_secret_value()
        self._configured = {key.kid: key for key in signing_keys_from_json(configured)} if configured else {}
        self._configured_order = list(self._configured)
        self._current: SigningKey | None = None
        self._current_read_at = float("-inf")
        self._bootstrapped = False
        self._sealer = KeySealer(settings.signing_key_passphrase.get_secret_value())
        self._loaded: dict[str, SigningKey] = {}  # decrypting costs a key derivation: once per kid

    @property
    def published_window(self) -> dt.timedelta:
        """How long a retired key stays published: its tokens' lifetime plus the margin."""
        s = self._settings
        return dt.timedelta(seconds=s.access_token_ttl_seconds + s.key_retirement_margin_seconds)

    async def bootstrap(self) -> None:
        """Import configured keys; make sure some key can sign."""
        async with self._db.transaction() as session:
            await _lock(session)
            # Reverse order with increasing created_at: the first configured key ends up newest.
            for offset, kid in enumerate(reversed(self._configured_order)):
                key = self._configured[kid]
                await session.execute(
                    pg_insert(signing_keys)
                    .values(
                        kid=kid,
                        private_pem=self._sealer.seal(key),
                        created_at=sa.func.now() + dt.timedelta(microseconds=offset),
                    )
                    .on_conflict_do_nothing(index_elements=["kid"])
                )
            if await _newest_active(session) is None:
                key = generate_signing_key()
                await session.execute(
                    sa.insert(signing_keys).values(kid=key.kid, private_pem=self._sealer.seal(key))
                )
                log.info("generated a signing key", extra={"kid": key.kid})
            if self._sealer.encrypts:
                await self._seal_stored_keys(session)

    async def _seal_stored_keys(self, session: AsyncConnection) -> None:
        """Encrypt keys stored in the clear (before a passphrase was configured)."""
        rows = (await session.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_pem))).all()
        for row in rows:
            if not KeySealer.is_sealed(row.private_pem):
                sealed = self._sealer.seal(self._sealer.open(row.kid, row.private_pem))
                await session.execute(
                    sa.update(signing_keys).where(signing_keys.c.kid == row.kid).values(private_pem=sealed)
                )
                log.info("encrypted a stored signing key", extra={"kid": row.kid})

    def _key(self, kid: str, stored_pem: str) -> SigningKey:
        key = self._configured.get(kid) or self._loaded.get(kid)
        if key is None:
            key = self._loaded[kid] = self._sealer.open(kid, stored_pem)
        return key

    async def current(self) -> SigningKey:
        """The key to sign with, re-read from the schema every ``signing_key_refresh_seconds``."""
        if not self._bootstrapped:
            await self.bootstrap()
            self._bootstrapped = True
        now = time.monotonic()
        if self._current is None or now - self._current_read_at >= self._settings.signing_key_refresh_seconds:
            async with self._db.transaction() as session:
                row = await _newest_active(session)
            if row is None:
                raise RuntimeError("no signing key after bootstrap")
            self._current = self._key(row.kid, row.private_pem)
            self._current_read_at = now
        return self._current

    async def public_jwks(self) -> list[dict[str, str]]:
        """Every key a live token can carry: active ones, recently retired ones, configured ones."""
        async with self._db.transaction() as session:
            rows = (
                await session.execute(
                    sa.select(signing_keys.c.kid, signing_keys.c.private_pem)
                    .where(
                        sa.or_(
                            signing_keys.c.retired_at.is_(None),
                            signing_keys.c.retired_at > sa.func.now() - self.published_window,
                        )
                    )
                    .order_by(signing_keys.c.created_at.desc())
                )
            ).all()
        keys = {row.kid: self._key(row.kid, row.private_pem) for row in rows}
        for kid, key in self._configured.items():
            keys.setdefault(kid, key)
        return [key.public_jwk() for key in keys.values()]


async def rotate(db: Database, settings: UsersSettings) -> str:
    """Add a new signing key and retire the others; returns the new key id."""
    key = generate_signing_key()
    sealer = KeySealer(settings.signing_key_passphrase.get_secret_value())
    async with db.transaction() as session:
        await _lock(session)
        await session.execute(
            sa.update(signing_keys)
            .where(signing_keys.c.retired_at.is_(None))
            .values(retired_at=sa.func.now())
        )
        await session.execute(
            sa.insert(signing_keys).values(
                kid=key.kid,
                private_pem=sealer.seal(key),
                # clock_timestamp(): newer than every key of this transaction's now().
                created_at=sa.func.clock_timestamp(),
            )
        )
    return key.kid


async def _lock(session: AsyncConnection) -> None:
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(_ROTATION_LOCK)))


async def _newest_active(session: AsyncConnection) -> Any:
    return (
        await session.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.private_pem)
            .where(signing_keys.c.retired_at.is_(None))
            .order_by(signing_keys.c.created_at.desc())
            .limit(1)
        )
    ).first()


class KeySealer:
    """Private keys to and from their stored PEM: encrypted PKCS#8 with a passphrase, else clear."""

    _SEALED_HEADER = "-----BEGIN ENCRYPTED PRIVATE KEY-----"

    def __init__(self, passphrase: str) -> None:
        self._passphrase = passphrase.encode() or None

    @property
    def encrypts(self) -> bool:
        return self._passphrase is not None

    @classmethod
    def is_sealed(cls, pem: str) -> bool:
        return pem.lstrip().startswith(cls._SEALED_HEADER)

    def seal(self, key: SigningKey) -> str:
        if self._passphrase is None:
            return key.private_pem()
        encryption = serialization.BestAvailableEncryption(self._passphrase)
        return key.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ).decode()

    def open(self, kid: str, pem: str) -> SigningKey:
        sealed = self.is_sealed(pem)
        if sealed and self._passphrase is None:
            raise RuntimeError(
                f"signing key {kid} is stored encrypted: set STYLESTUDIO_SIGNING_KEY_PASSPHRASE"
            )
        try:
            private = serialization.load_pem_private_key(
                pem.encode(), password=self._passphrase if sealed else None
            )
        except ValueError as error:
            message = f"signing key {kid} cannot be decrypted with the configured passphrase"
            raise RuntimeError(message) from error
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {kid} is not an EC key")
        return SigningKey(kid, private)
