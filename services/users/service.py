"""The users service assembled: its parts built once per process, shared by the servicers and
by the process's own token verification (the users service trusts its key store directly
instead of calling itself over gRPC)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from kit.access import UserLookup, credential_state_lookup
from kit.auth import UserTokenVerifier
from kit.errors import DependencyUnavailable
from kit.server import Registration, Runtime, ServiceDefinition
from kit.tokens import AccessTokenVerifier, ApiKeyVerifier, bearer_verifier
from services.users import accounts, api, models, monitoring
from services.users.apikeys import ApiKeys
from services.users.credentials import Credentials
from services.users.keys import KeyStore
from services.users.oauth import OAuthSignIn
from services.users.passwords import Passwords
from services.users.profiles import Profiles
from services.users.settings import UsersSettings
from services.users.signin import Authentication
from services.users.throttle import LoginThrottle, SignupLimit
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc


@dataclass
class UsersParts:
    keys: KeyStore
    auth: Authentication
    profiles: Profiles
    api_keys: ApiKeys
    credentials: Credentials


_parts: dict[int, UsersParts] = {}


def parts(runtime: Runtime) -> UsersParts:
    if id(runtime) not in _parts:
        settings: UsersSettings = runtime.settings  # type: ignore[assignment]
        accounts.common_passwords()  # loaded now rather than by the first sign-up
        keys = KeyStore(runtime.db, settings)
        credentials = Credentials(runtime.db, runtime.redis, settings)
        auth = Authentication(
            db=runtime.db,
            outbox=runtime.outbox,
            keys=keys,
            passwords=Passwords(settings),
            throttle=LoginThrottle(runtime.redis, settings),
            signups=SignupLimit(runtime.redis, settings),
            oauth=OAuthSignIn(settings, runtime.redis),
            credentials=credentials,
            settings=settings,
        )
        _parts[id(runtime)] = UsersParts(
            keys,
            auth,
            Profiles(runtime.db, runtime.outbox, credentials),
            ApiKeys(runtime.db, runtime.outbox, credentials),
            credentials,
        )
    return _parts[id(runtime)]


def registrations(runtime: Runtime) -> Sequence[Registration]:
    monitoring.watch(runtime.metrics)
    p = parts(runtime)
    return [
        Registration(
            api.AuthApi(p.auth, p.keys, p.api_keys, p.credentials),
            auth_pb2_grpc.add_AuthServiceServicer_to_server,
            auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
        ),
        Registration(
            api.UsersApi(runtime, p.profiles, p.api_keys),
            users_pb2_grpc.add_UsersServiceServicer_to_server,
            users_pb2.DESCRIPTOR.services_by_name["UsersService"],
        ),
    ]


def local_user_verifier(runtime: Runtime) -> UserTokenVerifier:
    """Access tokens checked against the key store, API keys against the table, credential
    states rebuilt from the database when Redis has none: no self-call."""
    p = parts(runtime)

    async def published_keys() -> list[dict[str, str]]:
        try:
            return await p.keys.public_jwks()
        except sa.exc.SQLAlchemyError as error:
            raise DependencyUnavailable("database", "The key store is unavailable") from error

    # API keys are not cached here: a revoked key or a downgraded plan takes effect at once.
    return bearer_verifier(
        AccessTokenVerifier(published_keys, min_refresh_seconds=1.0),
        ApiKeyVerifier(p.api_keys.authenticate, cache_seconds=0.0),
        p.credentials.states,
    )


def local_user_lookup(runtime: Runtime) -> UserLookup:
    """The standing of a user a service calls for: the users service's own credential states,
    read from its table on a miss (no self-call)."""
    return credential_state_lookup(parts(runtime).credentials.states)


def definition(settings: UsersSettings | None = None) -> ServiceDefinition:
    return ServiceDefinition(
        name="users",
        settings=settings or UsersSettings(),
        metadata=models.metadata,
        register=registrations,
        user_verifier=local_user_verifier,
        user_lookup=local_user_lookup,
    )
