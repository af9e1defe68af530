"""ListGenerations pages newest first by keyset, and refuses a page token it did not give out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import pytest

from kit import paging
from kit.errors import from_rpc_error
from stylestudio.generation.v1 import generation_pb2
from tests.generation.conftest import Shopper
from tests.harness import Platform


async def test_pages_walk_every_generation_newest_first_once(gen_platform: Platform) -> None:
    shopper = Shopper(gen_platform, plan="pro")
    await shopper.grant(10)
    product = await shopper.upload()
    started = [(await shopper.create([product], prompt=f"a hat {i}")).id for i in range(5)]

    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await shopper.generation.ListGenerations(
            generation_pb2.ListGenerationsRequest(page_size=2, page_token=token), metadata=shopper.metadata
        )
        seen += [generation.id for generation in page.generations]
        sizes.append(len(page.generations))
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(started))
    assert sizes == [2, 2, 1]


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        paging.encode_sequence(5),  # billing's kind of token
        paging.encode_cursor(datetime.now(UTC), uuid.uuid4()) + "\x00",
        "A" * 5000,
    ],
)
async def test_a_forged_page_token_is_a_400_naming_it(gen_platform: Platform, token: str) -> None:
    shopper = Shopper(gen_platform)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await shopper.generation.ListGenerations(
            generation_pb2.ListGenerationsRequest(page_token=token), metadata=shopper.metadata
        )
    refused = from_rpc_error(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.reason, refused.details.get("field")) == ("VALIDATION_ERROR", "pageToken")
