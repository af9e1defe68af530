"""A user's totals for /v1/users/me/stats, gathered from billing, generation and files at once.

Each source gets its own deadline; one that fails or is slow costs only its own numbers
(left at 0 and named in ``missing_sources``), never the whole answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from kit.clients import ServiceClients
from kit.errors import DomainError
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc
from stylestudio.users.v1 import users_pb2

log = logging.getLogger("stylestudio.users.stats")


async def gather_stats(
    clients: ServiceClients, user_id: str, timeout: float
) -> tuple[users_pb2.GetMyStatsResponse, list[str]]:
    billing = clients.stub("billing", billing_pb2_grpc.BillingServiceStub)
    generation = clients.stub("generation", generation_pb2_grpc.GenerationServiceStub)
    files = clients.stub("files", files_pb2_grpc.FilesServiceStub)
    calls: dict[str, Any] = {
        "billing": billing.GetUserBillingSummary(
            billing_pb2.GetUserBillingSummaryRequest(user_id=user_id), timeout=timeout
        ),
        "generation": generation.GetUserGenerationStats(
            generation_pb2.GetUserGenerationStatsRequest(user_id=user_id), timeout=timeout
        ),
        "files": files.GetStorageSummary(
            files_pb2.GetStorageSummaryRequest(user_id=user_id), timeout=timeout
        ),
    }
    results = await asyncio.gather(*calls.values(), return_exceptions=True)
    answers: dict[str, Any] = dict(zip(calls, results, strict=True))
    stats = users_pb2.GetMyStatsResponse()
    missing = []
    for source, answer in answers.items():
        if isinstance(answer, grpc.RpcError | DomainError | OSError):
            code = answer.code() if isinstance(answer, grpc.RpcError) else None
            log.warning("stats source did not answer", extra={"source": source, "code": str(code)})
            missing.append(source)
        elif isinstance(answer, BaseException):
            raise answer
    if "billing" not in missing:
        stats.tokens_spent = answers["billing"].tokens_spent
        stats.tokens_purchased = answers["billing"].tokens_purchased
    if "generation" not in missing:
        stats.total_generations = answers["generation"].total
        stats.completed_generations = answers["generation"].completed
        stats.failed_generations = answers["generation"].failed
    if "files" not in missing:
        stats.storage_bytes = answers["files"].total_bytes
    return stats, missing
