"""GET /v1/dashboard: one document from seven RPCs, called concurrently with the caller's credentials.

A part that fails does not fail the document: its place is ``null`` and ``errors``
holds its error (API.md's error object) under the part's name, so a client shows
what it has. Two exceptions, where a partial document would mislead:
- a part answers UNAUTHENTICATED: the credentials are bad, so the answer is that 401;
- no part succeeds: the answer is the first part's error, with its status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import orjson

from gateway.descriptors import ApiDescriptors, ApiMethod
from gateway.errors import ApiError, from_rpc_error
from gateway.transcoding import to_json
from kit.errors import service_of


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    rpc: str
    # the response field to show (a list), or "" for the whole response
    pick: str = ""
    paged: bool = False


PARTS: tuple[Part, ...] = (
    Part("user", "stylestudio.users.v1.UsersService.GetMe"),
    Part("stats", "stylestudio.users.v1.UsersService.GetMyStats"),
    Part(
        "recentGenerations",
        "stylestudio.generation.v1.GenerationService.ListGenerations",
        "generations",
        True,
    ),
    Part("recentUsage", "stylestudio.analytics.v1.AnalyticsService.ListUsageRecords", "records", True),
    Part("storage", "stylestudio.files.v1.FilesService.GetStorageUsage"),
    Part("billing.balance", "stylestudio.billing.v1.BillingService.GetBalance"),
    Part("billing.recentPurchases", "stylestudio.billing.v1.BillingService.ListPurchases", "purchases", True),
)


class Dashboard:
    def __init__(
        self, descriptors: ApiDescriptors, recent_items: int, deadline: float, retry_after: int
    ) -> None:
        methods = {part.name: descriptors.find_method(part.rpc) for part in PARTS}
        self.available = all(method is not None for method in methods.values())
        self._methods: dict[str, ApiMethod] = {k: v for k, v in methods.items() if v is not None}
        self._recent_items = recent_items
        self._deadline = deadline
        self._retry_after = retry_after
        self._callables: dict[str, Any] = {}

    def bind(self, callables: dict[str, Any]) -> None:
        """The multicallables, by part name (made once the channels are open)."""
        self._callables = callables

    def methods(self) -> dict[str, ApiMethod]:
        return self._methods

    async def render(self, metadata: Sequence[tuple[str, str]]) -> tuple[int, bytes]:
        results = await asyncio.gather(
            *(self._call(part, metadata) for part in PARTS), return_exceptions=True
        )
        document: dict[str, Any] = {"billing": {}}
        errors: dict[str, Any] = {}
        first_error: ApiError | None = None
        for part, result in zip(PARTS, results, strict=True):
            value: object = None
            if isinstance(result, grpc.aio.AioRpcError):
                failure = from_rpc_error(result, self._retry_after, service_of(part.rpc))
                if failure.status == "UNAUTHENTICATED":
                    return failure.http_status, failure.json()
                first_error = first_error or failure
                errors[part.name] = failure.body()["error"]
            elif isinstance(result, BaseException):
                raise result
            else:
                document_part = to_json(result)
                value = document_part.get(_camel(part.pick), []) if part.pick else document_part
            holder, _, key = part.name.rpartition(".")
            (document[holder] if holder else document)[key] = value
        if first_error is not None and len(errors) == len(PARTS):
            return first_error.http_status, first_error.json()
        document["errors"] = errors
        return 200, orjson.dumps(document)

    async def _call(self, part: Part, metadata: Sequence[tuple[str, str]]) -> Any:
        method = self._methods[part.name]
        request = method.request_class()
        if part.paged:
            request.page_size = self._recent_items  # type: ignore[attr-defined]
        return await self._callables[part.name](
            request.SerializeToString(), metadata=metadata, timeout=self._deadline
        )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)
