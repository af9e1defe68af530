"""Holds, grants and balances over the internal and public gRPC API."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.billing import store
from stylestudio.billing.v1 import billing_pb2, resources_pb2
from tests.billing.conftest import bearer, fund
from tests.billing.test_welcome_grant import user_created


def reserve(
    user_id: str, amount: int, key: str | None = None, **extra: object
) -> billing_pb2.ReserveTokensRequest:
    generation_id = str(uuid.uuid4())
    return billing_pb2.ReserveTokensRequest(
        user_id=user_id,
        amount=amount,
        generation_id=generation_id,
        idempotency_key=key or f"generation:{generation_id}:hold",
        **extra,  # type: ignore[arg-type]
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def summary(internal, user_id: str) -> billing_pb2.GetUserBillingSummaryResponse:  # type: ignore[no-untyped-def]
    return await internal.GetUserBillingSummary(billing_pb2.GetUserBillingSummaryRequest(user_id=user_id))


async def test_a_hold_reduces_available_and_capture_spends_it(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 4))
    assert hold.status == resources_pb2.HOLD_STATUS_PENDING and hold.amount == 4
    after_hold = await summary(internal, user_id)
    assert (after_hold.balance, after_hold.reserved, after_hold.available) == (10, 4, 6)

    captured = await internal.CaptureHold(
        billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key="c1")
    )
    assert captured.status == resources_pb2.HOLD_STATUS_CAPTURED and captured.captured_amount == 4
    after = await summary(internal, user_id)
    assert (after.balance, after.reserved, after.available, after.tokens_spent) == (6, 0, 6, 4)


async def test_capturing_less_than_held_gives_the_rest_back(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 5))
    captured = await internal.CaptureHold(
        billing_pb2.CaptureHoldRequest(hold_id=hold.id, amount=2, idempotency_key="partial")
    )
    assert captured.captured_amount == 2
    after = await summary(internal, user_id)
    assert (after.balance, after.reserved) == (8, 0)


async def test_capturing_more_than_held_is_a_validation_error(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 3))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.CaptureHold(
            billing_pb2.CaptureHoldRequest(hold_id=hold.id, amount=4, idempotency_key="x")
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(failure.value).metadata["field"] == "amount"
    assert (await summary(internal, user_id)).reserved == 3


async def test_insufficient_tokens_names_required_and_available(internal) -> None:
    user_id = await fund(internal, 2)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.ReserveTokens(reserve(user_id, 3))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(failure.value)
    assert info.reason == "INSUFFICIENT_TOKENS"
    assert dict(info.metadata) == {"required": "3", "available": "2"}


async def test_a_user_without_a_wallet_has_nothing_available(internal) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.ReserveTokens(reserve(str(uuid.uuid4()), 1))
    assert error_info(failure.value).metadata["available"] == "0"


async def test_the_same_idempotency_key_returns_the_same_hold_and_reserves_once(internal) -> None:
    user_id = await fund(internal, 10)
    request = reserve(user_id, 3, key=f"retry:{uuid.uuid4()}")
    holds = await asyncio.gather(*(internal.ReserveTokens(request) for _ in range(8)))
    assert len({hold.id for hold in holds}) == 1
    assert (await summary(internal, user_id)).reserved == 3


async def test_a_reused_key_for_another_amount_is_a_conflict(internal) -> None:
    user_id = await fund(internal, 10)
    key = f"reused:{uuid.uuid4()}"
    await internal.ReserveTokens(reserve(user_id, 3, key=key))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.ReserveTokens(reserve(user_id, 4, key=key))
    assert error_info(failure.value).reason == "CONFLICT"


async def test_double_capture_spends_once(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 4))
    captures = await asyncio.gather(
        *(
            internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key=f"k{i}"))
            for i in range(6)
        )
    )
    assert {c.status for c in captures} == {resources_pb2.HOLD_STATUS_CAPTURED}
    assert (await summary(internal, user_id)).balance == 6


async def test_capture_after_release_fails_and_moves_nothing(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 4))
    released = await internal.ReleaseHold(billing_pb2.ReleaseHoldRequest(hold_id=hold.id, reason="canceled"))
    assert released.status == resources_pb2.HOLD_STATUS_RELEASED
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key="late"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    again = await internal.ReleaseHold(billing_pb2.ReleaseHoldRequest(hold_id=hold.id))
    assert again.status == resources_pb2.HOLD_STATUS_RELEASED
    after = await summary(internal, user_id)
    assert (after.balance, after.reserved) == (10, 0)


async def test_release_after_capture_is_refused(internal) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(reserve(user_id, 4))
    await internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key="c"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.ReleaseHold(billing_pb2.ReleaseHoldRequest(hold_id=hold.id))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await summary(internal, user_id)).balance == 6


async def test_an_expired_hold_is_released_by_the_sweeper_once(internal, billing) -> None:
    user_id = await fund(internal, 10)
    hold = await internal.ReserveTokens(
        reserve(user_id, 4, expires_in=duration_pb2.Duration(nanos=300_000_000))
    )
    for _ in range(50):
        await asyncio.sleep(0.1)
        if (await summary(internal, user_id)).reserved == 0:
            break
    released = await internal.ReleaseHold(billing_pb2.ReleaseHoldRequest(hold_id=hold.id, reason="late"))
    assert released.status == resources_pb2.HOLD_STATUS_EXPIRED
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key="late"))
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await summary(internal, user_id)
    assert (after.balance, after.reserved, after.tokens_spent) == (10, 0, 0)
    events = [e.type for e in await billing.stream("events.billing") if e.user_id == user_id]
    for _ in range(30):
        if "billing.hold_released" in events:
            break
        await asyncio.sleep(0.1)
        events = [e.type for e in await billing.stream("events.billing") if e.user_id == user_id]
    assert events.count("billing.hold_released") == 1


async def test_an_unknown_or_malformed_hold_is_not_found(internal) -> None:
    for hold_id in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold_id, idempotency_key="k"))
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("amount", "field"), [(0, "amount"), (-1, "amount")])
async def test_bad_amounts_are_validation_errors(internal, amount: int, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await internal.ReserveTokens(reserve(str(uuid.uuid4()), amount))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(failure.value).metadata["field"] == field


async def test_grants_are_idempotent_and_reported(internal) -> None:
    user_id = str(uuid.uuid4())
    request = billing_pb2.GrantTokensRequest(
        user_id=user_id, amount=7, reason="promo", idempotency_key=f"g:{user_id}"
    )
    first, second = await asyncio.gather(internal.GrantTokens(request), internal.GrantTokens(request))
    assert first.transaction.id == second.transaction.id
    assert first.balance == second.balance == 7
    assert (await summary(internal, user_id)).balance == 7


async def test_internal_rpcs_refuse_users(billing, public) -> None:
    user_id, token = billing.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.GrantTokens(
            billing_pb2.GrantTokensRequest(user_id=user_id, amount=1000, reason="me", idempotency_key="x"),
            metadata=bearer(token),
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_balance_and_transactions_newest_first_in_pages(billing, internal, public) -> None:
    user_id, token = billing.token()
    await fund(internal, 10, user_id)
    hold = await internal.ReserveTokens(reserve(user_id, 3))
    await internal.CaptureHold(billing_pb2.CaptureHoldRequest(hold_id=hold.id, amount=2, idempotency_key="c"))
    balance = await public.GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
    assert (balance.balance, balance.reserved, balance.available) == (8, 0, 8)

    kinds, amounts, token_ = [], [], ""
    while True:
        page = await public.ListTransactions(
            billing_pb2.ListTransactionsRequest(page_size=2, page_token=token_), metadata=bearer(token)
        )
        kinds += [resources_pb2.TransactionKind.Name(t.kind) for t in page.transactions]
        amounts += [(t.amount, t.balance_after) for t in page.transactions]
        token_ = page.next_page_token
        if not token_:
            break
    # The capture and the release of its rest are one statement: either may come first.
    assert set(kinds[:2]) == {"RELEASE", "CAPTURE"} and kinds[2:] == ["HOLD", "GRANT"]
    assert sorted(amounts[:2]) == [(-2, 8), (1, 8)] and amounts[2:] == [(3, 10), (10, 10)]


async def test_a_forged_page_token_is_a_validation_error(billing, public) -> None:
    _, token = billing.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.ListTransactions(
            billing_pb2.ListTransactionsRequest(page_token="!!nonsense"), metadata=bearer(token)
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_admins_grant_tokens_with_an_idempotency_key(billing, public) -> None:
    _, admin = billing.token(role="admin")
    user_id = await _known_user(billing)
    request = billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=5, reason="support")
    metadata = (*bearer(admin), ("idempotency-key", "grant-1"))
    first = await public.AdminGrantTokens(request, metadata=metadata)
    second = await public.AdminGrantTokens(request, metadata=metadata)
    assert first.balance == second.balance == 5 + 10
    _, user = billing.token()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.AdminGrantTokens(request, metadata=bearer(user))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _known_user(billing) -> str:  # type: ignore[no-untyped-def]
    """A user billing has seen sign up: its wallet was opened by the user.created consumer."""
    user_id = str(uuid.uuid4())
    await billing.publish("events.users", user_created(user_id))
    _, token = billing.token(user_id)
    for _ in range(100):
        answer = await billing.user_stub().GetBalance(billing_pb2.GetBalanceRequest(), metadata=bearer(token))
        if answer.balance:
            return user_id
        await asyncio.sleep(0.05)
    raise AssertionError("the welcome grant never arrived")


async def test_a_grant_to_a_user_billing_never_saw_is_not_found_and_opens_no_wallet(billing, public) -> None:
    _, admin = billing.token(role="admin")
    stranger = str(uuid.uuid4())
    for user_id in (stranger, "not-a-user-id"):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await public.AdminGrantTokens(
                billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=5, reason="support"),
                metadata=(*bearer(admin), ("idempotency-key", uuid.uuid4().hex)),
            )
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    async with billing.service.runtime.db.transaction() as session:  # type: ignore[union-attr]
        assert await store.wallet(session, stranger) is None


@pytest.mark.parametrize("amount", [1_000_001, 2**31, 9223372036854775807])
async def test_a_grant_above_the_limit_is_a_validation_error(billing, public, amount: int) -> None:
    _, admin = billing.token(role="admin")
    user_id = await _known_user(billing)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await public.AdminGrantTokens(
            billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=amount, reason="support"),
            metadata=(*bearer(admin), ("idempotency-key", uuid.uuid4().hex)),
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1000000" in failure.value.details()
    at_the_limit = await public.AdminGrantTokens(
        billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=1_000_000, reason="support"),
        metadata=(*bearer(admin), ("idempotency-key", uuid.uuid4().hex)),
    )
    assert at_the_limit.balance == 1_000_000 + 10


async def test_a_grant_key_reused_for_another_grant_is_a_conflict(billing, public) -> None:
    _, admin = billing.token(role="admin")
    user_id = await _known_user(billing)
    metadata = (*bearer(admin), ("idempotency-key", f"grant-{user_id}"))
    first = billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=5, reason="support")
    await public.AdminGrantTokens(first, metadata=metadata)
    for other in (
        billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=6, reason="support"),
        billing_pb2.AdminGrantTokensRequest(user_id=user_id, amount=5, reason="another reason"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await public.AdminGrantTokens(other, metadata=metadata)
        assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
