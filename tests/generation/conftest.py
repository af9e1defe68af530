"""A platform of its own for the generation tests: fault injection on, short timings, own database."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from PIL import Image

from services.generation.settings import DEFAULT_MODELS
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc, resources_pb2
from tests.generation.replicate_server import FakeReplicate, ReplicateServer
from tests.harness import Platform, TestDatabase, own_database

REPLICATE_MODEL, REPLICATE_VERSION = (
    "dall-e-3",
    "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
)
TERMINAL = {resources_pb2.COMPLETED, resources_pb2.FAILED, resources_pb2.CANCELED}

GENERATION_ENV = {
    "STYLESTUDIO_FAULT_INJECTION": "true",
    "STYLESTUDIO_CONSUMER_CLAIM_IDLE_MS": "1500",
    "STYLESTUDIO_WORKER_LEASE_SECONDS": "3",
    "STYLESTUDIO_SWEEPER_INTERVAL_SECONDS": "0.5",
    "STYLESTUDIO_START_ABANDONED_AFTER_SECONDS": "2",
    "STYLESTUDIO_QUEUED_REQUEUE_AFTER_SECONDS": "5",
    "STYLESTUDIO_RESOLUTION_RETRY_AFTER_SECONDS": "1",
    "STYLESTUDIO_GENERATION_DEADLINE_SECONDS": "15",
    "STYLESTUDIO_PROVIDER_RETRY_BACKOFF_SECONDS": "0.05",
    "STYLESTUDIO_WATCH_POLL_INTERVAL_SECONDS": "0.5",
    "STYLESTUDIO_OUTBOX_POLL_INTERVAL_SECONDS": "0.2",
    "STYLESTUDIO_REPLICATE_POLL_INTERVAL_SECONDS": "3",
    # dall-e-3 runs on (the fake) Replicate; the other models stay local.
    "STYLESTUDIO_IMAGE_MODELS": json.dumps(
        [m.model_dump() for m in DEFAULT_MODELS if m.name != REPLICATE_MODEL]
        + [
            {
                "name": REPLICATE_MODEL,
                "display_name": "DALL-E 3",
                "multiplier": 2.0,
                "provider": "replicate",
                "replicate_version": REPLICATE_VERSION,
                # The fake's version is an SDXL one: it takes the SDXL family's inputs.
                "parameters": ["negativePrompt", "guidanceScale"],
            }
        ]
    ),
}


@pytest.fixture(scope="package")
def generation_database(infrastructure: object) -> Iterator[TestDatabase]:
    with own_database(infrastructure) as database:
        yield database


@pytest.fixture(scope="package")
def replicate() -> Iterator[FakeReplicate]:
    server = ReplicateServer(FakeReplicate())
    server.start()
    yield server.fake
    server.stop()


@pytest.fixture(scope="package")
async def gen_platform(
    generation_database: TestDatabase,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    replicate: FakeReplicate,
) -> AsyncIterator[Platform]:
    running = Platform(
        generation_database, redis_url, tmp_path_factory.mktemp("generation"), extra_env=GENERATION_ENV
    )
    # The webhook URL is the gateway's, known once the platform picked its ports.
    running.add_env(
        {
            "STYLESTUDIO_REPLICATE_BASE_URL": replicate.url,
            "STYLESTUDIO_REPLICATE_API_TOKEN": replicate.api_token,
            "STYLESTUDIO_REPLICATE_WEBHOOK_SECRET": replicate.secret,
            "STYLESTUDIO_REPLICATE_WEBHOOK_URL": f"{running.gateway_url}/webhooks/replicate",
        }
    )
    async with running:
        await running.start_all()
        yield running


def png(colour: str = "red", size: tuple[int, int] = (240, 320)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


class Shopper:
    """A user with a token, files and a wallet, talking gRPC to the platform."""

    def __init__(self, platform: Platform, plan: str = "free") -> None:
        self.platform = platform
        self.user_id, self.token = platform.user_token(plan=plan)
        self.metadata = platform.bearer(self.token)
        self.generation = generation_pb2_grpc.GenerationServiceStub(platform.user_channel("generation"))
        self.files = files_pb2_grpc.FilesServiceStub(platform.user_channel("files"))
        self.billing = billing_pb2_grpc.BillingServiceStub(platform.user_channel("billing"))

    async def grant(self, amount: int) -> None:
        stub = self.platform.stub("billing", billing_pb2_grpc.BillingServiceStub)
        await stub.GrantTokens(
            billing_pb2.GrantTokensRequest(
                user_id=self.user_id, amount=amount, reason="test", idempotency_key=str(uuid.uuid4())
            )
        )

    async def upload(self, category: str = "product_image", colour: str = "red") -> str:
        content = png(colour)

        async def parts() -> AsyncIterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(
                    filename="item.png", content_type="image/png", category=category
                )
            )
            yield files_pb2.UploadFileRequest(chunk=content)

        file = await self.files.UploadFile(parts(), metadata=self.metadata)
        return str(file.id)

    async def balance(self) -> billing_pb2.GetBalanceResponse:
        return await self.billing.GetBalance(billing_pb2.GetBalanceRequest(), metadata=self.metadata)

    async def create(
        self,
        product_files: list[str],
        prompt: str = "a red dress",
        key: str | None = None,
        **parameters: object,
    ) -> resources_pb2.Generation:
        metadata = self.metadata + ((("idempotency-key", key),) if key else ())
        values: dict[str, object] = {"quality": "draft"} | parameters
        return await self.generation.CreateGeneration(
            generation_pb2.CreateGenerationRequest(
                product_image_files=product_files,
                prompt=prompt,
                parameters=resources_pb2.GenerationParameters(**values),  # type: ignore[arg-type]
            ),
            metadata=metadata,
            # Generous: 50 concurrent starts on a loaded 2-core machine queue behind each other.
            timeout=60,
        )

    async def get(self, generation_id: str) -> resources_pb2.Generation:
        return await self.generation.GetGeneration(
            generation_pb2.GetGenerationRequest(id=generation_id), metadata=self.metadata
        )

    async def wait_terminal(self, generation_id: str, timeout: float = 30.0) -> resources_pb2.Generation:
        deadline = time.monotonic() + timeout
        while True:
            generation = await self.get(generation_id)
            if generation.status in TERMINAL:
                return generation
            if time.monotonic() > deadline:
                raise AssertionError(f"generation still {generation.status} after {timeout}s")
            await asyncio.sleep(0.1)


def reason_of(error: grpc.aio.AioRpcError) -> str:
    from kit.errors import from_rpc_error

    return str(from_rpc_error(error).reason)
