"""Least privilege between services, on the real platform: each identity proves itself with its own
key, reaches exactly the INTERNAL RPCs the protos name it for, and acts for a user only where
declared, with that user's plan as the users service holds it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import message_factory

from kit.access import MethodAccess
from kit.auth import SERVICE_TOKEN_AUDIENCE, SERVICE_TOKEN_ISSUER, ServiceCredentials
from kit.errors import from_rpc_error
from kit.service_keys import IDENTITIES, SigningIdentity, development_key
from stylestudio.analytics.v1 import analytics_pb2
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc
from tests.harness import Platform
from tests.harness.identities import internal_methods, platform_services
from tests.harness.rest import sign_up

USER = "a signed-in user"
ANONYMOUS = "no credential"
# What the old shared-secret scheme signed with: its development default.
OLD_SHARED_SECRET = "dev-only-service-secret-change-me-in-production"


def _request_classes() -> dict[str, tuple[Any, bool]]:
    """``/pkg.Service/Method`` -> (request class, server-streaming), from the descriptors."""
    found = {}
    for service in platform_services():
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            found[f"/{service.full_name}/{method.name}"] = (request_class, method.server_streaming)
    return found


async def _call(platform: Platform, method: str, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    """Calls ``method`` with an empty request; the status it ends with."""
    service = method.split("/")[1].split(".")[1]
    request_class, streaming = _request_classes()[method]
    async with grpc.aio.insecure_channel(platform.addresses[service]) as channel:
        try:
            if streaming:
                async for _ in channel.unary_stream(method, request_class.SerializeToString)(
                    request_class(), metadata=metadata, timeout=10
                ):
                    pass
            else:
                await channel.unary_unary(method, request_class.SerializeToString)(
                    request_class(), metadata=metadata, timeout=10
                )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_every_internal_rpc_answers_exactly_its_declared_callers(platform: Platform) -> None:
    """The matrix: every INTERNAL RPC (from the descriptors) against every identity, a user and
    nobody. A declared caller gets past the access check (the handler then judges the empty
    request); anyone else is refused before it."""
    methods: Mapping[str, MethodAccess] = internal_methods()
    _, user_token = platform.user_token()
    callers: dict[str, tuple[tuple[str, str], ...]] = {
        identity: _bearer(platform.credentials(identity).token()) for identity in IDENTITIES
    }
    callers |= {USER: _bearer(user_token), ANONYMOUS: ()}
    answers = {
        (method, caller): await _call(platform, method, metadata)
        for method in methods
        for caller, metadata in callers.items()
    }
    # The access check refuses anyone but a declared service with PERMISSION_DENIED, before the
    # handler; a declared caller gets the handler's own answer to an empty request (OK, NOT_FOUND,
    # INVALID_ARGUMENT, or UNAUTHENTICATED from AuthenticateApiKey for its empty key).
    refused = grpc.StatusCode.PERMISSION_DENIED
    wrong = {
        (method, caller): code.name
        for (method, caller), code in answers.items()
        if (caller in methods[method].callers) == (code == refused)
    }
    assert wrong == {}
    # A declared caller's credential itself is accepted: only AuthenticateApiKey's handler answers
    # UNAUTHENTICATED (for the empty key it was given).
    unauthenticated = {
        method
        for (method, caller), code in answers.items()
        if caller in methods[method].callers and code == grpc.StatusCode.UNAUTHENTICATED
    }
    assert unauthenticated <= {"/stylestudio.users.v1.AuthService/AuthenticateApiKey"}
    assert len(methods) >= 16  # every INTERNAL RPC of the five services, not a silent few
    assert {m.split("/")[1] for m in methods} >= {
        "stylestudio.users.v1.AuthService",
        "stylestudio.users.v1.UsersService",
        "stylestudio.billing.v1.BillingService",
        "stylestudio.files.v1.FilesService",
        "stylestudio.generation.v1.GenerationService",
        "stylestudio.analytics.v1.AnalyticsService",
    }


async def test_a_refused_service_is_logged_with_its_name_and_the_method(platform: Platform) -> None:
    stub = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CaptureHold(
            billing_pb2.CaptureHoldRequest(hold_id="h"), metadata=_files_credential(platform)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "files may not call this method" in (refused.value.details() or "")
    lines = [line for line in platform.logs("billing").splitlines() if "caller not allowed" in line]
    assert any("rpc=/stylestudio.billing.v1.BillingService/CaptureHold" in line for line in lines)
    assert any("caller_service=files" in line for line in lines)


def _files_credential(platform: Platform) -> tuple[tuple[str, str], ...]:
    return _bearer(platform.credentials("files").token())


def _claims(subject: str, **extra: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": SERVICE_TOKEN_ISSUER,
        "aud": SERVICE_TOKEN_AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + 300,
    } | extra


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forged(platform: Platform) -> dict[str, str]:
    """Service credentials claiming to be the generation service, none of them really its."""
    generation = platform.keyring.keys["generation"]
    billing = platform.keyring.keys["billing"]
    stranger = SigningIdentity("generation", ed25519.Ed25519PrivateKey.generate())
    claims = _claims("generation")

    def signed(key: SigningIdentity, kid: str, payload: Mapping[str, object] = claims) -> str:
        return jwt.encode(
            dict(payload), key.private_key, algorithm="EdDSA", headers={"typ": "svc", "kid": kid}
        )

    # HS256 keyed with generation's public key (the "algorithm confusion" attack), by hand:
    # PyJWT itself refuses to use a PEM as an HMAC secret.
    header = _b64(json.dumps({"alg": "HS256", "typ": "svc", "kid": generation.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(generation.public_pem().encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return {
        "billing's key, naming generation": signed(billing, billing.kid),
        "billing's key under generation's key id": signed(billing, generation.kid),
        "a key not in the public set": signed(stranger, stranger.kid),
        "the development key": ServiceCredentials(development_key("generation")).token(),
        "the old shared secret (HS256)": jwt.encode(
            claims, OLD_SHARED_SECRET, algorithm="HS256", headers={"typ": "svc"}
        ),
        "HS256 keyed with the public key": f"{header}.{body}.{_b64(mac)}",
        "alg none": jwt.encode(claims, "", algorithm="none", headers={"typ": "svc", "kid": generation.kid}),
        "expired": signed(generation, generation.kid, _claims("generation", iat=1, exp=2)),
        "another audience": signed(generation, generation.kid, _claims("generation", aud="stylestudio")),
    }


@pytest.mark.parametrize(
    "forgery",
    [
        "billing's key, naming generation",
        "billing's key under generation's key id",
        "a key not in the public set",
        "the development key",
        "the old shared secret (HS256)",
        "HS256 keyed with the public key",
        "alg none",
        "expired",
        "another audience",
    ],
)
async def test_a_forged_service_credential_is_refused(platform: Platform, forgery: str) -> None:
    stub = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))
    request = billing_pb2.ReserveTokensRequest(
        user_id=str(uuid.uuid4()),
        amount=1,
        generation_id=str(uuid.uuid4()),
        idempotency_key=str(uuid.uuid4()),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ReserveTokens(request, metadata=_bearer(_forged(platform)[forgery]))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The real generation credential gets through the same door (to an empty wallet).
    with pytest.raises(grpc.aio.AioRpcError) as answered:
        await stub.ReserveTokens(request, metadata=platform.credentials("generation").metadata())
    assert str(from_rpc_error(answered.value).reason) == "INSUFFICIENT_TOKENS"


async def test_a_declared_service_acts_for_a_user_with_the_plan_the_users_service_holds(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    user_id = (await sign_up(gateway))["user"]["id"]
    stub = generation_pb2_grpc.GenerationServiceStub(platform.user_channel("generation"))
    as_operator = platform.credentials("operator").metadata(on_behalf_of=user_id)
    listed = await stub.ListGenerations(generation_pb2.ListGenerationsRequest(), metadata=as_operator)
    assert list(listed.generations) == []
    batch = generation_pb2.BatchCreateGenerationsRequest()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchCreateGenerations(batch, metadata=as_operator)
    error = from_rpc_error(refused.value)
    assert (str(error.reason), error.details["plan"]) == ("FEATURE_NOT_IN_PLAN", "free")

    _, admin = platform.user_token(role="admin")
    raised = await gateway.patch(
        f"/v1/admin/users/{user_id}", json={"plan": "pro"}, headers={"Authorization": f"Bearer {admin}"}
    )
    assert raised.status_code == 200, raised.text
    await asyncio.sleep(1.0)  # the freshness rule: a change counts for calls a second after it
    # The same credential, still minted without any plan: the call now runs as a pro user's.
    with pytest.raises(grpc.aio.AioRpcError) as validated:
        await stub.BatchCreateGenerations(batch, metadata=as_operator)
    assert str(from_rpc_error(validated.value).reason) == "VALIDATION_ERROR"

    # The audit trail: the RPC's log line and its span name both the service and the user.
    method = "/stylestudio.generation.v1.GenerationService/ListGenerations"
    logged = [line for line in platform.logs("generation").splitlines() if f"rpc={method}" in line]
    assert any(f"caller_service=operator on_behalf_of={user_id}" in line for line in logged)
    spans = await _spans(platform, method, user_id)
    assert spans and spans[0]["attributes"]["stylestudio.caller.service"] == "operator"


async def _spans(platform: Platform, name: str, user_id: str) -> list[dict[str, Any]]:
    for _ in range(50):  # the span file is written when the span ends, just after the answer
        spans = [json.loads(line) for line in platform.trace_file.read_text().splitlines() if line]
        found = [
            s
            for s in spans
            if s["name"] == name
            and s["kind"] == "SERVER"
            and s["attributes"].get("stylestudio.user.id") == user_id
        ]
        if found:
            return found
        await asyncio.sleep(0.1)
    return []


@pytest.mark.parametrize("acting", ["billing", "gateway", "generation"])
async def test_an_undeclared_service_cannot_act_for_a_user(
    platform: Platform, gateway: httpx.AsyncClient, acting: str
) -> None:
    user_id = (await sign_up(gateway))["user"]["id"]
    stub = generation_pb2_grpc.GenerationServiceStub(platform.user_channel("generation"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListGenerations(
            generation_pb2.ListGenerationsRequest(),
            metadata=platform.credentials(acting).metadata(on_behalf_of=user_id),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_acting_for_a_user_opens_no_other_door(platform: Platform, gateway: httpx.AsyncClient) -> None:
    """Only the declared USER RPCs: not another service's, not an INTERNAL or an ADMIN one, and not
    for a user who does not exist."""
    user_id = (await sign_up(gateway))["user"]["id"]
    operator = platform.credentials("operator")
    refusals = {
        "/stylestudio.billing.v1.BillingService/GetBalance": (user_id, grpc.StatusCode.PERMISSION_DENIED),
        "/stylestudio.analytics.v1.AnalyticsService/GetUserActivitySummary": (
            user_id,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "/stylestudio.billing.v1.BillingService/AdminGrantTokens": (
            user_id,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        "/stylestudio.generation.v1.GenerationService/ListGenerations": (
            str(uuid.uuid4()),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    }
    for method, (acted_for, expected) in refusals.items():
        code = await _call(platform, method, operator.metadata(on_behalf_of=acted_for))
        assert code == expected, method
    # The operator's own credential still reaches what it is declared for.
    summary = analytics_pb2.GetUserActivitySummaryRequest(user_id=user_id)
    assert await _call_with(platform, summary, operator) == grpc.StatusCode.OK


async def _call_with(platform: Platform, request: Any, credentials: ServiceCredentials) -> grpc.StatusCode:
    method = "/stylestudio.analytics.v1.AnalyticsService/GetUserActivitySummary"
    async with grpc.aio.insecure_channel(platform.addresses["analytics"]) as channel:
        try:
            await channel.unary_unary(method, type(request).SerializeToString)(
                request, metadata=credentials.metadata(), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK
