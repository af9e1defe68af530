"""Available never goes below zero, whatever the concurrency."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stylestudio.billing.v1 import billing_pb2
from tests.billing.conftest import fund


async def test_200_concurrent_reserves_on_a_wallet_that_affords_17(billing, internal) -> None:
    user_id = await fund(internal, 17)
    engine = create_async_engine(billing.settings.service_database_url)
    lowest: list[int] = []
    done = asyncio.Event()

    async def watch_available() -> None:
        # Samples available through a connection of its own all along the storm.
        async with engine.connect() as connection:
            while not done.is_set():
                row = (
                    await connection.execute(
                        sa.text("SELECT balance - reserved FROM billing.accounts WHERE user_id = :u"),
                        {"u": user_id},
                    )
                ).one()
                lowest.append(int(row[0]))
                await connection.commit()
                await asyncio.sleep(0)

    async def one_reserve(index: int) -> bool:
        generation_id = str(uuid.uuid4())
        try:
            await internal.ReserveTokens(
                billing_pb2.ReserveTokensRequest(
                    user_id=user_id,
                    amount=1,
                    generation_id=generation_id,
                    idempotency_key=f"race:{index}:{user_id}",
                )
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return False
        return True

    watcher = asyncio.create_task(watch_available())
    results = await asyncio.gather(*(one_reserve(i) for i in range(200)))
    done.set()
    await watcher
    await engine.dispose()

    assert sum(results) == 17
    after = await internal.GetUserBillingSummary(billing_pb2.GetUserBillingSummaryRequest(user_id=user_id))
    assert (after.balance, after.reserved, after.available) == (17, 17, 0)
    assert lowest and min(lowest) >= 0


async def test_the_database_refuses_a_negative_available_even_from_buggy_code(billing) -> None:
    user_id = await fund(billing.service_stub(), 3)
    engine = create_async_engine(billing.settings.service_database_url)
    try:
        async with engine.begin() as connection:
            try:
                await connection.execute(
                    sa.text("UPDATE billing.accounts SET reserved = reserved + 4 WHERE user_id = :u"),
                    {"u": user_id},
                )
            except sa.exc.IntegrityError as error:
                assert "wallet_available_not_negative" in str(error)
            else:
                raise AssertionError("the CHECK constraint let available go negative")
    finally:
        await engine.dispose()


async def test_transfers_cannot_be_rewritten(billing) -> None:
    await fund(billing.service_stub(), 3)
    engine = create_async_engine(billing.settings.service_database_url)
    try:
        for statement in (
            "UPDATE billing.transfers SET amount = amount + 1",
            "DELETE FROM billing.transfers",
        ):
            async with engine.begin() as connection:
                try:
                    await connection.execute(sa.text(statement))
                except sa.exc.DBAPIError as error:
                    assert "append-only" in str(error)
                else:
                    raise AssertionError(f"{statement} was allowed")
    finally:
        await engine.dispose()
