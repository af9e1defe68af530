"""The users service's gRPC servicers: proto in, domain call, proto out."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from kit.auth import current_caller
from kit.interceptors import idempotency_key
from kit.origin import client_origin
from kit.server import Runtime
from services.users import store
from services.users.apikeys import ApiKeys
from services.users.credentials import Credentials
from services.users.entitlements import gather_entitlements
from services.users.keys import KeyStore
from services.users.profiles import Profiles, parse_user_id
from services.users.settings import UsersSettings
from services.users.signin import Authentication, ClientInfo, SignedIn
from services.users.stats import gather_stats
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, resources_pb2, users_pb2, users_pb2_grpc


def user_message(user: store.Row) -> resources_pb2.User:
    message = resources_pb2.User(
        id=str(user.id),
        email=user.email,
        name=user.name,
        image_url=user.image_url,
        plan=user.plan,
        role=user.role,
    )
    message.created_at.FromDatetime(user.created_at)
    if user.last_login_at is not None:
        message.last_login_at.FromDatetime(user.last_login_at)
    return message


def api_key_message(key: store.Row) -> resources_pb2.ApiKey:
    message = resources_pb2.ApiKey(id=str(key.id), name=key.name, prefix=key.prefix)
    message.created_at.FromDatetime(key.created_at)
    if key.last_used_at is not None:
        message.last_used_at.FromDatetime(key.last_used_at)
    return message


def client_info(context: grpc.aio.ServicerContext) -> ClientInfo:
    origin = client_origin(context)
    return ClientInfo(ip=origin.ip, user_agent=origin.user_agent)


class AuthApi(auth_pb2_grpc.AuthServiceServicer):
    """AuthService: sign-up, sign-in, tokens, the JWKS and API-key resolution."""

    def __init__(
        self, auth: Authentication, keys: KeyStore, api_keys: ApiKeys, credentials: Credentials
    ) -> None:
        self.auth = auth
        self.keys = keys
        self.api_keys = api_keys
        self.credentials = credentials

    @staticmethod
    def _pair(signed_in: SignedIn, response_type: type) -> object:
        return response_type(
            user=user_message(signed_in.user),
            access_token=signed_in.access_token,
            refresh_token=signed_in.refresh_token,
            expires_in=signed_in.expires_in,
        )

    async def Signup(
        self, request: auth_pb2.SignupRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.SignupResponse:
        signed_in = await self.auth.signup(
            request.email, request.password, request.name, client_info(context)
        )
        return self._pair(signed_in, auth_pb2.SignupResponse)  # type: ignore[return-value]

    async def Login(
        self, request: auth_pb2.LoginRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.LoginResponse:
        signed_in = await self.auth.login(request.email, request.password, client_info(context))
        return self._pair(signed_in, auth_pb2.LoginResponse)  # type: ignore[return-value]

    async def RefreshToken(
        self, request: auth_pb2.RefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RefreshTokenResponse:
        signed_in = await self.auth.refresh(request.refresh_token)
        return self._pair(signed_in, auth_pb2.RefreshTokenResponse)  # type: ignore[return-value]

    async def Logout(
        self, request: auth_pb2.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.auth.logout(request.refresh_token)
        return empty_pb2.Empty()

    async def StartOAuthSignIn(
        self, request: auth_pb2.StartOAuthSignInRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.StartOAuthSignInResponse:
        url, state = await self.auth.oauth_start(request.provider)
        return auth_pb2.StartOAuthSignInResponse(authorization_url=url, state=state)

    async def CompleteOAuthSignIn(
        self, request: auth_pb2.CompleteOAuthSignInRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CompleteOAuthSignInResponse:
        signed_in = await self.auth.oauth_complete(
            request.provider, request.code, request.state, client_info(context)
        )
        return self._pair(signed_in, auth_pb2.CompleteOAuthSignInResponse)  # type: ignore[return-value]

    async def GetJwks(
        self, request: auth_pb2.GetJwksRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(
            keys=[resources_pb2.Jwk(**jwk) for jwk in await self.keys.public_jwks()]
        )

    async def AuthenticateApiKey(
        self, request: auth_pb2.AuthenticateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.AuthenticateApiKeyResponse:
        caller, version = await self.api_keys.authenticate(request.secret)
        return auth_pb2.AuthenticateApiKeyResponse(
            user_id=caller.subject,
            plan=caller.plan,
            role=caller.role,
            key_id=caller.api_key_id,
            credentials_version=version,
        )

    async def GetCredentialState(
        self, request: auth_pb2.GetCredentialStateRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CredentialState:
        state = await self.credentials.rebuild(request.user_id)
        return auth_pb2.CredentialState(
            version=state.version,
            role=state.role,
            plan=state.plan,
            ended_session_ids=sorted(state.ended_sessions),
            exists=state.exists,
        )


class UsersApi(users_pb2_grpc.UsersServiceServicer):
    """UsersService: the caller's profile, stats and API keys; admin changes; GetUser for services."""

    def __init__(self, runtime: Runtime, profiles: Profiles, api_keys: ApiKeys) -> None:
        self.runtime = runtime
        self.profiles = profiles
        self.api_keys = api_keys

    async def GetMe(
        self, request: users_pb2.GetMeRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.User:
        return user_message(await self.profiles.get(parse_user_id(current_caller().user_id)))

    async def UpdateMe(
        self, request: users_pb2.UpdateMeRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.User:
        user = await self.profiles.update(
            parse_user_id(current_caller().user_id),
            name=request.name if request.HasField("name") else None,
            image_url=request.image_url if request.HasField("image_url") else None,
        )
        return user_message(user)

    async def GetMyStats(
        self, request: users_pb2.GetMyStatsRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.GetMyStatsResponse:
        user = await self.profiles.get(parse_user_id(current_caller().user_id))
        settings: UsersSettings = self.runtime.settings  # type: ignore[assignment]
        stats, missing = await gather_stats(
            self.runtime.clients, str(user.id), settings.stats_rpc_timeout_seconds
        )
        stats.member_since.FromDatetime(user.created_at)
        stats.missing_sources.extend(missing)
        return stats

    async def GetMyEntitlements(
        self, request: users_pb2.GetMyEntitlementsRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.Entitlements:
        # The plan from the database, not the caller's (a token's or a credential state's copy).
        user = await self.profiles.get(parse_user_id(current_caller().user_id))
        settings: UsersSettings = self.runtime.settings  # type: ignore[assignment]
        return await gather_entitlements(
            self.runtime.clients, str(user.id), user.plan, settings.entitlements_rpc_timeout_seconds
        )

    async def CreateApiKey(
        self, request: users_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.CreateApiKeyResponse:
        caller = current_caller()
        created = await self.api_keys.create(
            parse_user_id(caller.user_id),
            caller.plan,
            request.name,
            idempotency_key(context),
        )
        return users_pb2.CreateApiKeyResponse(api_key=api_key_message(created.key), secret=created.secret)

    async def ListApiKeys(
        self, request: users_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> users_pb2.ListApiKeysResponse:
        keys, next_token = await self.api_keys.list(
            parse_user_id(current_caller().user_id), request.page_size, request.page_token
        )
        return users_pb2.ListApiKeysResponse(
            api_keys=[api_key_message(key) for key in keys], next_page_token=next_token
        )

    async def DeleteApiKey(
        self, request: users_pb2.DeleteApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self.api_keys.delete(parse_user_id(current_caller().user_id), request.id)
        return empty_pb2.Empty()

    async def AdminUpdateUser(
        self, request: users_pb2.AdminUpdateUserRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.User:
        user = await self.profiles.set_plan_and_role(
            parse_user_id(request.user_id),
            plan=request.plan if request.HasField("plan") else None,
            role=request.role if request.HasField("role") else None,
            changed_by=current_caller().subject,
        )
        return user_message(user)

    async def GetUser(
        self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext
    ) -> resources_pb2.User:
        return user_message(await self.profiles.get(parse_user_id(request.user_id)))
