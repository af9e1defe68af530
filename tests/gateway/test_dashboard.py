"""/v1/dashboard over stand-in services: concurrent fan-out, the caller's token, partial failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest

from gateway.settings import DEFAULT_DESCRIPTOR_SET
from stylestudio.analytics.v1 import analytics_pb2
from stylestudio.analytics.v1 import resources_pb2 as analytics_resources
from stylestudio.billing.v1 import billing_pb2
from stylestudio.billing.v1 import resources_pb2 as billing_resources
from stylestudio.files.v1 import files_pb2
from stylestudio.files.v1 import resources_pb2 as files_resources
from stylestudio.generation.v1 import generation_pb2
from stylestudio.generation.v1 import resources_pb2 as generation_resources
from stylestudio.users.v1 import resources_pb2 as users_resources
from stylestudio.users.v1 import users_pb2
from tests.gateway.conftest import gateway_settings, run_gateway
from tests.gateway.echo_service import start_server

RECENT = 3
DELAY = 0.3


class StandIns:
    """The seven RPCs the dashboard calls; ``failures`` makes some of them fail."""

    def __init__(self) -> None:
        self.failures: dict[str, grpc.StatusCode] = {}
        self.seen: dict[str, dict[str, str]] = {}

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def rpc(name: str, request_type: Any, make: Callable[[Any], Any]) -> grpc.RpcMethodHandler:
            async def behave(request: Any, context: grpc.aio.ServicerContext) -> Any:
                self.seen[name] = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
                if getattr(request, "page_size", RECENT) != RECENT:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected page size")
                await asyncio.sleep(DELAY)  # concurrency shows as a total well under 7 x DELAY
                if name in self.failures:
                    await context.abort(self.failures[name], f"{name} failed")
                return make(request)

            return grpc.unary_unary_rpc_method_handler(
                behave, request_type.FromString, lambda m: m.SerializeToString()
            )

        return [
            grpc.method_handlers_generic_handler(
                "stylestudio.users.v1.UsersService",
                {
                    "GetMe": rpc(
                        "GetMe", users_pb2.GetMeRequest, lambda _: users_resources.User(id="u1", name="Ann")
                    ),
                    "GetMyStats": rpc(
                        "GetMyStats",
                        users_pb2.GetMyStatsRequest,
                        lambda _: users_pb2.GetMyStatsResponse(total_generations=4),
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "stylestudio.generation.v1.GenerationService",
                {
                    "ListGenerations": rpc(
                        "ListGenerations",
                        generation_pb2.ListGenerationsRequest,
                        lambda _: generation_pb2.ListGenerationsResponse(
                            generations=[generation_resources.Generation(id="g1")]
                        ),
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "stylestudio.analytics.v1.AnalyticsService",
                {
                    "ListUsageRecords": rpc(
                        "ListUsageRecords",
                        analytics_pb2.ListUsageRecordsRequest,
                        lambda _: analytics_pb2.ListUsageRecordsResponse(
                            records=[analytics_resources.UsageRecord(id="r1", action="login")]
                        ),
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "stylestudio.files.v1.FilesService",
                {
                    "GetStorageUsage": rpc(
                        "GetStorageUsage",
                        files_pb2.GetStorageUsageRequest,
                        lambda _: files_resources.StorageUsage(total_bytes=10, file_count=1),
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "stylestudio.billing.v1.BillingService",
                {
                    "GetBalance": rpc(
                        "GetBalance",
                        billing_pb2.GetBalanceRequest,
                        lambda _: billing_pb2.GetBalanceResponse(balance=7, reserved=2, available=5),
                    ),
                    "ListPurchases": rpc(
                        "ListPurchases",
                        billing_pb2.ListPurchasesRequest,
                        lambda _: billing_pb2.ListPurchasesResponse(
                            purchases=[billing_resources.Purchase(id="p1")]
                        ),
                    ),
                },
            ),
        ]


@pytest.fixture(scope="module")
async def stand_ins() -> AsyncIterator[tuple[StandIns, str]]:
    services = StandIns()
    server, target = await start_server(*services.handlers())
    running = await run_gateway(
        DEFAULT_DESCRIPTOR_SET,
        {name: target for name in _all_services()},
        gateway_settings(dashboard_recent_items=RECENT),
    )
    yield services, running.url
    await running.close()
    await server.stop(0)


def _all_services() -> list[str]:
    from gateway.descriptors import ApiDescriptors

    return sorted({method.service for method in ApiDescriptors.from_file(DEFAULT_DESCRIPTOR_SET).methods})


TOKEN = {"Authorization": "Bearer user-token"}


async def test_dashboard_is_one_document_gathered_concurrently_with_the_callers_token(
    stand_ins: tuple[StandIns, str],
) -> None:
    services, url = stand_ins
    services.failures.clear()
    async with httpx.AsyncClient(base_url=url) as client:
        started = asyncio.get_running_loop().time()
        response = await client.get("/v1/dashboard", headers=TOKEN)
        elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 200, response.text
    document = response.json()
    assert set(document) == {
        "user",
        "stats",
        "recentGenerations",
        "recentUsage",
        "storage",
        "billing",
        "errors",
    }
    assert document["errors"] == {}
    assert document["user"]["id"] == "u1"
    assert document["billing"]["balance"] == {"balance": "7", "reserved": "2", "available": "5"}
    assert document["stats"]["totalGenerations"] == 4
    assert [g["id"] for g in document["recentGenerations"]] == ["g1"]
    assert [r["action"] for r in document["recentUsage"]] == ["login"]
    assert document["storage"]["totalBytes"] == "10"
    assert [p["id"] for p in document["billing"]["recentPurchases"]] == ["p1"]
    assert elapsed < 3 * DELAY  # seven calls of DELAY each, made concurrently
    assert len(services.seen) == 7
    assert all(seen["authorization"] == "Bearer user-token" for seen in services.seen.values())


async def test_a_failing_part_is_reported_and_the_rest_is_served(stand_ins: tuple[StandIns, str]) -> None:
    services, url = stand_ins
    services.failures = {
        "GetStorageUsage": grpc.StatusCode.UNAVAILABLE,
        "GetBalance": grpc.StatusCode.UNIMPLEMENTED,
    }
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/dashboard", headers=TOKEN)
    assert response.status_code == 200
    document = response.json()
    assert document["storage"] is None
    assert document["billing"]["balance"] is None
    assert document["user"]["id"] == "u1"
    assert document["errors"]["storage"]["code"] == 503
    assert document["errors"]["billing.balance"]["status"] == "UNIMPLEMENTED"


async def test_bad_credentials_fail_the_whole_dashboard(stand_ins: tuple[StandIns, str]) -> None:
    services, url = stand_ins
    services.failures = {"GetMe": grpc.StatusCode.UNAUTHENTICATED}
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/dashboard", headers=TOKEN)
        assert response.status_code == 401
        assert (await client.get("/v1/dashboard")).status_code == 401  # no token: refused before any call


async def test_when_every_part_fails_the_first_error_is_the_answer(stand_ins: tuple[StandIns, str]) -> None:
    services, url = stand_ins
    names = [
        "GetMe",
        "GetMyStats",
        "ListGenerations",
        "ListUsageRecords",
        "GetStorageUsage",
        "GetBalance",
        "ListPurchases",
    ]
    services.failures = dict.fromkeys(names, grpc.StatusCode.UNIMPLEMENTED)
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/dashboard", headers=TOKEN)
    assert response.status_code == 501
    assert response.json()["error"]["status"] == "UNIMPLEMENTED"
