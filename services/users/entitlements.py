"""What a user's plan includes and how much of its limits is left, for /v1/users/me/entitlements.

The plan is the users database's (the current one, not the token's) and so are its features
(kit/plans.py); the numbers come from the services that count them, asked at once with the
plan: generation's hourly limit and window, files' storage quota and use. As with the stats,
a source that fails or is slow costs only its own numbers, named in ``missing_sources``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from kit.clients import ServiceClients
from kit.errors import DomainError
from kit.plans import features_of
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc
from stylestudio.users.v1 import users_pb2

log = logging.getLogger("stylestudio.users.entitlements")


async def gather_entitlements(
    clients: ServiceClients, user_id: str, plan: str, timeout: float
) -> users_pb2.Entitlements:
    generation = clients.stub("generation", generation_pb2_grpc.GenerationServiceStub)
    files = clients.stub("files", files_pb2_grpc.FilesServiceStub)
    calls: dict[str, Any] = {
        "generation": generation.GetGenerationAllowance(
            generation_pb2.GetGenerationAllowanceRequest(user_id=user_id, plan=plan), timeout=timeout
        ),
        "files": files.GetStorageSummary(
            files_pb2.GetStorageSummaryRequest(user_id=user_id, plan=plan), timeout=timeout
        ),
    }
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    answers: dict[str, Any] = dict(zip(calls, results, strict=True))
    entitlements = users_pb2.Entitlements(plan=plan, features=features_of(plan))
    for source, answer in answers.items():
        if isinstance(answer, grpc.RpcError | DomainError | OSError):
            code = answer.code() if isinstance(answer, grpc.RpcError) else None
            log.warning("entitlements source did not answer", extra={"source": source, "code": str(code)})
            entitlements.missing_sources.append(source)
        elif isinstance(answer, BaseException):
            raise answer
    if "generation" not in entitlements.missing_sources:
        allowance: generation_pb2.GenerationAllowance = answers["generation"]
        entitlements.generations_per_hour = allowance.limit
        entitlements.generations_remaining = allowance.remaining
        entitlements.next_generation_at.CopyFrom(allowance.next_generation_at)
    if "files" not in entitlements.missing_sources:
        entitlements.storage_quota_bytes = answers["files"].quota_bytes
        entitlements.storage_used_bytes = answers["files"].total_bytes
    return entitlements
