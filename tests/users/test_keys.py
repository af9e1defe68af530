"""Signing keys: the JWKS, rotation without downtime, retirement after the tokens' lifetime."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import jwt
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from kit.db import Database
from kit.tokens import sign_access_token
from services.users.keys import KeyStore, rotate
from services.users.models import signing_keys
from services.users.settings import UsersSettings
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform, TestDatabase, own_database
from tests.users.conftest import PASSWORD, signup
from tests.users.test_access import _admin_command


async def _kids(auth: auth_pb2_grpc.AuthServiceStub) -> list[str]:
    return [key.kid for key in (await auth.GetJwks(auth_pb2.GetJwksRequest())).keys]


async def test_the_jwks_publishes_public_keys_only(auth: auth_pb2_grpc.AuthServiceStub) -> None:
    jwks = await auth.GetJwks(auth_pb2.GetJwksRequest())
    assert jwks.keys
    for key in jwks.keys:
        assert (key.kty, key.crv, key.alg, key.use) == ("EC", "P-256", "ES256", "sig")
        assert key.kid and key.x and key.y
    assert "d" not in str(jwks).split()  # no private part


async def test_tokens_signed_with_the_previous_key_stay_valid_after_rotation(
    users_platform: Platform, auth: auth_pb2_grpc.AuthServiceStub, users: users_pb2_grpc.UsersServiceStub
) -> None:
    signed_up = await signup(auth)
    old_kid = jwt.get_unverified_header(signed_up.access_token)["kid"]

    rotated = _admin_command(users_platform, "rotate-keys")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")
    assert new_kid != old_kid and {old_kid, new_kid} <= set(await _kids(auth))

    # Within signing_key_refresh_seconds every replica signs with the new key ...
    deadline = time.monotonic() + 10
    while True:
        login = await auth.Login(auth_pb2.LoginRequest(email=signed_up.user.email, password=PASSWORD))
        if jwt.get_unverified_header(login.access_token)["kid"] == new_kid:
            break
        assert time.monotonic() < deadline, "the new key was never used"
        await asyncio.sleep(0.2)
    # ... and the token signed before the rotation still works until it expires.
    for token in (signed_up.access_token, login.access_token):
        me = await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(token))
        assert me.id == signed_up.user.id
    expired = sign_access_token(
        users_platform.signing_key,
        user_id=signed_up.user.id,
        plan="free",
        role="user",
        now=time.time() - 3600,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(expired))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_retired_key_leaves_the_jwks_once_its_tokens_expired(users_database: TestDatabase) -> None:
    settings = UsersSettings(access_token_ttl_seconds=60, key_retirement_margin_seconds=10)
    db = Database(users_database.service_urls["users"], "users", pool_size=1, max_overflow=0)
    try:
        store = KeyStore(db, settings)
        first = await rotate(db, settings)
        second = await rotate(db, settings)
        kids = {jwk["kid"] for jwk in await store.public_jwks()}
        assert {first, second} <= kids
        assert (await store.current()).kid == second
        async with db.transaction() as session:
            await session.execute(
                sa.update(signing_keys)
                .where(signing_keys.c.kid == first)
                .values(retired_at=sa.func.now() - sa.text("interval '71 seconds'"))
            )
        kids = {jwk["kid"] for jwk in await store.public_jwks()}
        assert first not in kids and second in kids
    finally:
        await db.dispose()


@pytest.fixture
def own_users_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A users schema no running service reads: these tests change how its keys are stored."""
    with own_database(infrastructure, ["users"]) as database:
        yield database


async def stored_pems(db: Database) -> dict[str, str]:
    async with db.transaction() as session:
        rows = (await session.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_pem))).all()
    return {row.kid: row.private_pem for row in rows}


async def test_with_a_passphrase_keys_are_stored_encrypted_and_clear_ones_get_encrypted(
    own_users_database: TestDatabase,
) -> None:
    db = Database(own_users_database.service_urls["users"], "users", pool_size=1, max_overflow=0)
    sealed = UsersSettings(signing_key_passphrase=SecretStr("correct horse battery staple"))
    try:
        clear_key = await KeyStore(db, UsersSettings()).current()  # generated before any passphrase
        assert "BEGIN PRIVATE KEY" in (await stored_pems(db))[clear_key.kid]

        store = KeyStore(db, sealed)
        assert (await store.current()).kid == clear_key.kid
        pems = await stored_pems(db)
        assert all(pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") for pem in pems.values())
        # The same key, now only readable with the passphrase: tokens and the JWKS are unchanged.
        assert (await store.current()).public_jwk() == clear_key.public_jwk()
        assert [jwk["kid"] for jwk in await store.public_jwks()] == [clear_key.kid]

        new_kid = await rotate(db, sealed)
        assert (await stored_pems(db))[new_kid].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert {jwk["kid"] for jwk in await KeyStore(db, sealed).public_jwks()} == {clear_key.kid, new_kid}

        with pytest.raises(RuntimeError, match="STYLESTUDIO_SIGNING_KEY_PASSPHRASE"):
            await KeyStore(db, UsersSettings()).current()
        with pytest.raises(RuntimeError, match="cannot be decrypted"):
            await KeyStore(db, UsersSettings(signing_key_passphrase=SecretStr("wrong"))).current()
    finally:
        await db.dispose()
