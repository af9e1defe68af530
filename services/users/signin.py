"""Signing in and out: sign-up, password login, OAuth, refresh rotation, logout.

A sign-in opens a session (IP, user agent, method) and returns a pair: a short-lived
access token (JWT, signed with the current key) and an opaque refresh token, stored
only as its SHA-256. A refresh token is single use: trading it marks it used and
issues a new pair in the same session; presenting a used one again means it leaked,
so the whole session is revoked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from kit import audit
from kit.db import Database
from kit.errors import Conflict, Unauthenticated, ValidationError
from kit.events import Outbox
from kit.origin import ClientOrigin
from kit.tokens import sign_access_token
from services.users import accounts, events, monitoring, store
from services.users.credentials import Credentials
from services.users.keys import KeyStore
from services.users.oauth import OAuthSignIn, ProviderIdentity
from services.users.origins import analytics_network
from services.users.passwords import Passwords
from services.users.settings import UsersSettings
from services.users.throttle import LoginThrottle, SignInThrottled, SignupLimit

PASSWORD = "password"
_WRONG_PAIR = "Wrong email or password"


@dataclass(frozen=True)
class ClientInfo:
    """Where a sign-in comes from, as the gateway forwarded it."""

    ip: str = ""
    user_agent: str = ""

    @property
    def origin(self) -> ClientOrigin:
        return ClientOrigin(ip=self.ip, user_agent=self.user_agent)


@dataclass(frozen=True)
class SignedIn:
    user: store.Row
    access_token: str
    refresh_token: str
    expires_in: int


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authentication:
    def __init__(
        self,
        *,
        db: Database,
        outbox: Outbox,
        keys: KeyStore,
        passwords: Passwords,
        throttle: LoginThrottle,
        signups: SignupLimit,
        oauth: OAuthSignIn,
        credentials: Credentials,
        settings: UsersSettings,
    ) -> None:
        self._db, self._outbox, self._keys = db, outbox, keys
        self._passwords, self._throttle, self._signups = passwords, throttle, signups
        self._oauth, self._settings = oauth, settings
        self._credentials = credentials

    @monitoring.counted("signup")
    async def signup(self, email: str, password: str, name: str, client: ClientInfo) -> SignedIn:
        email = accounts.normalize_email(email)
        name = accounts.validate_name(name)
        s = self._settings
        accounts.check_password_policy(
            password, min_length=s.password_min_length, max_length=s.password_max_length, email=email
        )
        # Counted before the (costly) hash and whatever the outcome: a taken email counts too,
        # or the limit would not bound probing for registered addresses.
        await self._signups.count(client.ip)
        password_hash = await self._passwords.hash(password)
        async with self._db.transaction() as session:
            user = await store.insert_user(session, email=email, name=name, password_hash=password_hash)
            if user is None:
                raise Conflict("An account with this email already exists", details={"field": "email"})
            await events.user_created(
                self._outbox, session, user.id, user.plan, PASSWORD, analytics_network(client.ip)
            )
            refresh_token, session_id = await self._open_session(session, user, PASSWORD, client)
        await self._throttle.remember_device(email, client.ip, client.user_agent)
        return await self._signed_in(user, session_id, refresh_token)

    @monitoring.counted("password")
    async def login(self, email: str, password: str, client: ClientInfo) -> SignedIn:
        if not email.strip() or not password:
            raise ValidationError(
                "Email and password are required", field="email" if not email else "password"
            )
        email = accounts.email_for_lookup(email)
        # The failure is counted before the password is checked (see throttle.py).
        try:
            reservation = await self._throttle.reserve(email, client.ip, client.user_agent)
        except SignInThrottled as refused:
            if refused.first:  # once per wait: a guesser's retries during it add nothing
                await self._audit_sign_in(
                    email,
                    audit.LOGIN_THROTTLED,
                    client,
                    {"scope": refused.scope, "retryAfterSeconds": refused.retry_after},
                )
            raise
        try:
            async with self._db.autocommit() as session:
                user = await store.get_user_by_email(session, email)
            stored_hash = user.password_hash if user is not None else None
            # Always one argon2 verification, against a decoy when there is no account or no
            # password: the answer takes as long whether or not the email exists.
            right = await self._passwords.verify(stored_hash, password) and user is not None
        except BaseException:
            # No answer about the password reaches the caller (hashing queue full, database
            # down, call cancelled): not a guess, so the unit goes back.
            await self._throttle.give_back(reservation, signed_in=False)
            raise
        if not right or user is None:
            reason = "unknown_account" if user is None else "wrong_password" if stored_hash else "no_password"
            details = {"reason": reason, "scope": reservation.scope}
            if reservation.delay_if_failed:
                details["delaySeconds"] = f"{reservation.delay_if_failed:g}"
            await self._audit_sign_in(email, audit.LOGIN_FAILED, client, details, user)
            raise Unauthenticated(_WRONG_PAIR)
        await self._throttle.give_back(reservation, signed_in=True)
        async with self._db.transaction() as session:
            if stored_hash and self._passwords.needs_rehash(stored_hash):
                await store.update_user(session, user.id, password_hash=await self._passwords.hash(password))
            user = await store.record_login(session, user.id)
            refresh_token, session_id = await self._open_session(session, user, PASSWORD, client)
        return await self._signed_in(user, session_id, refresh_token)

    async def _audit_sign_in(
        self,
        email: str,
        action: str,
        client: ClientInfo,
        details: Mapping[str, object],
        user: store.Row | None = None,
    ) -> None:
        """A refused sign-in has no change to ride on: its audit event is a transaction of its
        own. The target is the account (its id, never the email), when there is one."""
        async with self._db.transaction() as session:
            if user is None and action == audit.LOGIN_THROTTLED:
                user = await store.get_user_by_email(session, email)
            target = audit.user_target(user.id) if user is not None else ""
            await audit.record(
                self._outbox,
                session,
                action,
                target=target,
                details=details,
                actor=audit.NOBODY,
                origin=client.origin,
            )

    async def oauth_start(self, provider: str) -> tuple[str, str]:
        return await self._oauth.start(provider)

    @monitoring.counted("oauth")
    async def oauth_complete(self, provider: str, code: str, state: str, client: ClientInfo) -> SignedIn:
        identity = await self._oauth.complete(provider, code, state)
        async with self._db.transaction() as session:
            user = await self._account_for(session, identity, client)
            user = await store.record_login(session, user.id)
            refresh_token, session_id = await self._open_session(session, user, identity.provider, client)
        await self._throttle.remember_device(user.email, client.ip, client.user_agent)
        return await self._signed_in(user, session_id, refresh_token)

    async def _account_for(
        self, session: AsyncConnection, identity: ProviderIdentity, client: ClientInfo
    ) -> store.Row:
        """The linked account; else the account with the same verified email; else a new one."""
        user_id = await store.user_id_for_provider(session, identity.provider, identity.subject)
        if user_id is not None:
            user = await store.get_user(session, user_id)
            if user is not None:
                return user
        if not identity.email or not identity.email_verified:
            raise ValidationError(
                f"{identity.provider} did not share a verified email address", field="provider"
            )
        email = accounts.normalize_email(identity.email)
        user = await store.get_user_by_email(session, email)
        if user is None:
            await self._signups.count(client.ip)
            image_url = identity.picture if identity.picture.startswith("https://") else ""
            name = (identity.name.strip() or email.split("@")[0])[: accounts.NAME_MAX_LENGTH]
            user = await store.insert_user(
                session, email=email, name=name, password_hash=None, image_url=image_url
            )
            if user is None:  # created concurrently by another first sign-in
                user = await store.get_user_by_email(session, email)
                assert user is not None
            else:
                network = analytics_network(client.ip)
                await events.user_created(
                    self._outbox, session, user.id, user.plan, identity.provider, network
                )
                await store.link_provider(session, identity.provider, identity.subject, user.id)
                return user
        # An existing account gains a way in: the audit log's (an account taken over this way shows).
        await store.link_provider(session, identity.provider, identity.subject, user.id)
        await audit.record(
            self._outbox,
            session,
            audit.PROVIDER_LINKED,
            target=audit.user_target(user.id),
            details={"provider": identity.provider},
            actor=audit.Actor(user_id=str(user.id)),
            origin=client.origin,
        )
        return user

    @monitoring.counted("refresh")
    async def refresh(self, refresh_token: str) -> SignedIn:
        if not refresh_token:
            raise ValidationError("Refresh token is required", field="refreshToken")
        token_hash = hash_refresh_token(refresh_token)
        reused, user = False, None
        async with self._db.transaction() as session:
            found = await store.refresh_token_for_update(session, token_hash)
            if found is None or found.revoked_at is not None or found.expires_at <= _now():
                raise Unauthenticated("Refresh token is invalid or expired")
            if found.used_at is not None:
                # Someone else has (or had) this token: end the session for both of them,
                # and with it every access token it issued.
                await store.revoke_session(session, found.session_id, "refresh_reuse")
                ended = await self._credentials.changed(session, found.user_id)
                await audit.record(
                    self._outbox,
                    session,
                    audit.REFRESH_TOKEN_REUSED,
                    target=f"{audit.user_target(found.user_id)}/sessions/{found.session_id}",
                    actor=audit.NOBODY,
                )
                reused = True
            else:
                await store.mark_refresh_token_used(session, token_hash)
                new_token = await self._add_refresh_token(session, found.session_id)
                user = await store.get_user(session, found.user_id)
                if user is None:
                    raise Unauthenticated("Refresh token is invalid or expired")
        if reused:
            await self._credentials.publish(found.user_id, ended)
        if reused or user is None:
            raise Unauthenticated("Refresh token was already used; the session has been ended")
        return await self._signed_in(user, found.session_id, new_token)

    async def logout(self, refresh_token: str) -> None:
        """Ends the token's session; unknown or already ended sessions are fine."""
        if not refresh_token:
            raise ValidationError("Refresh token is required", field="refreshToken")
        async with self._db.transaction() as session:
            found = await store.refresh_token_for_update(session, hash_refresh_token(refresh_token))
            if found is None or not await store.revoke_session(session, found.session_id, "logout"):
                return
            await events.user_logged_out(self._outbox, session, found.user_id, found.session_id)
            ended = await self._credentials.changed(session, found.user_id)
        # The session's access tokens are refused from here on, not only its refresh token.
        await self._credentials.publish(found.user_id, ended)

    async def _open_session(
        self, session: AsyncConnection, user: store.Row, method: str, client: ClientInfo
    ) -> tuple[str, uuid.UUID]:
        session_id = await store.open_session(
            session, user_id=user.id, method=method, ip=client.ip[:64], user_agent=client.user_agent[:512]
        )
        refresh_token = await self._add_refresh_token(session, session_id)
        await events.user_logged_in(self._outbox, session, user.id, session_id, method)
        return refresh_token, session_id

    async def _add_refresh_token(self, session: AsyncConnection, session_id: uuid.UUID) -> str:
        token = secrets.token_urlsafe(32)
        expires_at = _now() + dt.timedelta(seconds=self._settings.refresh_token_ttl_seconds)
        await store.add_refresh_token(
            session, session_id=session_id, token_hash=hash_refresh_token(token), expires_at=expires_at
        )
        return token

    async def _signed_in(self, user: store.Row, session_id: uuid.UUID, refresh_token: str) -> SignedIn:
        ttl = self._settings.access_token_ttl_seconds
        access_token = sign_access_token(
            await self._keys.current(),
            user_id=str(user.id),
            plan=user.plan,
            role=user.role,
            session_id=str(session_id),
            ttl_seconds=ttl,
        )
        return SignedIn(user=user, access_token=access_token, refresh_token=refresh_token, expires_in=ttl)


async def end_all_sessions(
    db: Database,
    outbox: Outbox,
    credentials: Credentials,
    user_id: uuid.UUID,
    reason: str,
    actor: audit.Actor | None = None,
) -> int:
    """Sign the account out everywhere: every session, its refresh tokens at once and its access
    tokens within a second, in every service. The operator's `end-sessions` command today; the
    planned password change and reset and account deletion end sessions the same way."""
    async with db.transaction() as session:
        ended = await store.revoke_sessions_of(session, user_id, reason)
        state = await credentials.changed(session, user_id)
        await audit.record(
            outbox,
            session,
            audit.SESSIONS_ENDED,
            target=audit.user_target(user_id),
            details={"reason": reason, "sessions": len(ended)},
            actor=actor,
        )
    await credentials.publish(user_id, state)
    return len(ended)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
