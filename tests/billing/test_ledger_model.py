"""Random sequences of ledger operations against the running service and a simple model.

Hypothesis drives a state machine in a worker thread; each step is a real gRPC call
(or a signed Stripe webhook) run on the test's event loop, where the service lives.
After every step each wallet must match the model; at the end the reconciliation
must find every wallet equal to the sum of its transfers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from services.billing.payments import charge_refunded_event, payment_intent_object, stripe_event
from services.billing.reconcile import reconcile
from stylestudio.billing.v1 import billing_pb2, resources_pb2
from tests.billing.conftest import bearer

PACKAGES = {"starter": 10, "standard": 50}


@dataclasses.dataclass
class ModelHold:
    id: str
    user: int
    amount: int
    status: str = "pending"


@dataclasses.dataclass
class ModelPurchase:
    proto: resources_pb2.Purchase
    user: int
    status: str = "PENDING"


def machine_for(billing: Any, loop: asyncio.AbstractEventLoop) -> type[RuleBasedStateMachine]:
    internal, public = billing.service_stub(), billing.user_stub()

    def call(start: Callable[[], Awaitable[Any]]) -> Any:
        """Runs ``start()`` on the service's loop (gRPC calls belong to the loop that made them)."""

        async def run() -> Any:
            return await start()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=60)

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.users = [billing.token() for _ in range(2)]
            self.balance = [0, 0]
            self.reserved = [0, 0]
            self.holds: list[ModelHold] = []
            self.purchases: list[ModelPurchase] = []

        def user_id(self, user: int) -> str:
            return str(self.users[user][0])

        @rule(user=st.integers(0, 1), amount=st.integers(1, 20))
        def grant(self, user: int, amount: int) -> None:
            request = billing_pb2.GrantTokensRequest(
                user_id=self.user_id(user), amount=amount, reason="model", idempotency_key=str(uuid.uuid4())
            )
            call(lambda: internal.GrantTokens(request))
            self.balance[user] += amount

        @rule(user=st.integers(0, 1), amount=st.integers(1, 15), retries=st.integers(1, 2))
        def reserve(self, user: int, amount: int, retries: int) -> None:
            request = billing_pb2.ReserveTokensRequest(
                user_id=self.user_id(user),
                amount=amount,
                generation_id="g",
                idempotency_key=str(uuid.uuid4()),
            )
            affordable = self.balance[user] - self.reserved[user] >= amount
            for _ in range(retries):  # a retry with the same key moves nothing more
                try:
                    hold = call(lambda: internal.ReserveTokens(request))
                except grpc.aio.AioRpcError as error:
                    assert not affordable and error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    return
                assert affordable
            self.holds.append(ModelHold(hold.id, user, amount))
            self.reserved[user] += amount

        @precondition(lambda self: self.holds)
        @rule(index=st.integers(0, 1000), part=st.none() | st.integers(0, 15))
        def capture(self, index: int, part: int | None) -> None:
            hold = self.holds[index % len(self.holds)]
            request = billing_pb2.CaptureHoldRequest(hold_id=hold.id, idempotency_key=str(uuid.uuid4()))
            if part is not None:
                request.amount = part
            try:
                result = call(lambda: internal.CaptureHold(request))
            except grpc.aio.AioRpcError as error:
                if hold.status == "released":
                    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                else:
                    assert hold.status == "pending" and part is not None and part > hold.amount
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                return
            assert hold.status in ("pending", "captured")
            if hold.status == "pending":
                spent = hold.amount if part is None else part
                assert result.captured_amount == spent
                self.balance[hold.user] -= spent
                self.reserved[hold.user] -= hold.amount
                hold.status = "captured"

        @precondition(lambda self: self.holds)
        @rule(index=st.integers(0, 1000))
        def release(self, index: int) -> None:
            hold = self.holds[index % len(self.holds)]
            try:
                call(
                    lambda: internal.ReleaseHold(
                        billing_pb2.ReleaseHoldRequest(hold_id=hold.id, reason="model")
                    )
                )
            except grpc.aio.AioRpcError as error:
                assert hold.status == "captured" and error.code() == grpc.StatusCode.FAILED_PRECONDITION
                return
            assert hold.status in ("pending", "released")
            if hold.status == "pending":
                self.reserved[hold.user] -= hold.amount
                hold.status = "released"

        @rule(user=st.integers(0, 1), package=st.sampled_from(sorted(PACKAGES)), paid=st.booleans())
        def purchase(self, user: int, package: str, paid: bool) -> None:
            metadata = (*bearer(self.users[user][1]), ("idempotency-key", str(uuid.uuid4())))
            created = call(
                lambda: public.CreatePurchase(
                    billing_pb2.CreatePurchaseRequest(package_name=package), metadata=metadata
                )
            )
            purchase = ModelPurchase(created.purchase, user)
            self.purchases.append(purchase)
            if paid:
                self._pay(purchase)

        @precondition(lambda self: self.purchases)
        @rule(index=st.integers(0, 1000))
        def pay(self, index: int) -> None:
            self._pay(self.purchases[index % len(self.purchases)])

        def _pay(self, purchase: ModelPurchase) -> None:
            row = _row(purchase.proto)
            call(
                lambda: billing.webhook(
                    stripe_event("payment_intent.succeeded", payment_intent_object(row, "succeeded"))
                )
            )
            if purchase.status == "PENDING":
                purchase.status = "COMPLETED"
                self.balance[purchase.user] += PACKAGES[purchase.proto.package_name]

        @precondition(lambda self: self.purchases)
        @rule(index=st.integers(0, 1000))
        def refund(self, index: int) -> None:
            purchase = self.purchases[index % len(self.purchases)]
            call(lambda: billing.webhook(charge_refunded_event(_row(purchase.proto))))
            user = purchase.user
            if purchase.status == "COMPLETED":
                taken = min(PACKAGES[purchase.proto.package_name], self.balance[user] - self.reserved[user])
                self.balance[user] -= max(taken, 0)
            if purchase.status != "REFUNDED":
                purchase.status = "REFUNDED"

        @invariant()
        def wallets_match_the_model(self) -> None:
            for user in (0, 1):
                request = billing_pb2.GetUserBillingSummaryRequest(user_id=self.user_id(user))
                summary = call(partial(internal.GetUserBillingSummary, request))
                assert (summary.balance, summary.reserved) == (self.balance[user], self.reserved[user])
                assert summary.available >= 0

        def teardown(self) -> None:
            report = call(lambda: reconcile(billing.service.runtime.db))
            assert report.balanced, report.differences

    return LedgerMachine


def _row(purchase: resources_pb2.Purchase) -> dict[str, object]:
    return {
        "id": purchase.id,
        "package_name": purchase.package_name,
        "amount_cents": purchase.amount_cents,
        "currency": purchase.currency,
        "payment_intent_id": purchase.payment_intent_id,
    }


async def test_random_operations_match_a_simple_model_and_reconcile(billing) -> None:
    machine = machine_for(billing, asyncio.get_running_loop())
    bounded = settings(
        max_examples=8,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=bounded)
