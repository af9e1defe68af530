"""The billing service's gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from kit import paging
from kit.auth import current_caller
from kit.errors import ValidationError
from kit.interceptors import idempotency_key, metadata_value
from kit.server import Registration
from services.billing.ledger import Ledger
from services.billing.models import ADJUSTMENTS_ACCOUNT, GRANTS_ACCOUNT, PURCHASES_ACCOUNT, REFUNDS_ACCOUNT
from services.billing.pricing import PriceList
from services.billing.purchases import Purchases
from services.billing.settings import BillingSettings
from services.billing.store import Row
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc, resources_pb2

Context: TypeAlias = grpc.aio.ServicerContext
HOLD_STATUS = {
    "pending": resources_pb2.HOLD_STATUS_PENDING,
    "captured": resources_pb2.HOLD_STATUS_CAPTURED,
    "released": resources_pb2.HOLD_STATUS_RELEASED,
    "expired": resources_pb2.HOLD_STATUS_EXPIRED,
}
SYSTEM_ACCOUNTS = {GRANTS_ACCOUNT, PURCHASES_ACCOUNT, REFUNDS_ACCOUNT, ADJUSTMENTS_ACCOUNT}
OUTGOING_KINDS = {"CAPTURE", "REFUND"}


class BillingApi(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self, ledger: Ledger, purchases: Purchases, prices: PriceList, settings: BillingSettings
    ) -> None:
        self.ledger, self.purchases, self.prices, self.settings = ledger, purchases, prices, settings

    # --- public ---

    async def GetBalance(self, request: billing_pb2.GetBalanceRequest, context: Context) -> Any:
        balance = await self.ledger.balance(current_caller().user_id)
        return billing_pb2.GetBalanceResponse(
            balance=balance.balance, reserved=balance.reserved, available=balance.available
        )

    async def ListTransactions(self, request: billing_pb2.ListTransactionsRequest, context: Context) -> Any:
        size = paging.page_size(request.page_size)
        before = paging.decode_sequence(request.page_token)
        rows = await self.ledger.transactions(current_caller().user_id, before, size + 1)
        page = paging.page_of(rows, size, lambda row: paging.encode_sequence(row["seq"]))
        return billing_pb2.ListTransactionsResponse(
            transactions=[transaction_proto(row) for row in page.items], next_page_token=page.next_page_token
        )

    async def ListPackages(self, request: billing_pb2.ListPackagesRequest, context: Context) -> Any:
        return billing_pb2.ListPackagesResponse(
            packages=[
                resources_pb2.Package(
                    name=p.name,
                    display_name=p.display_name,
                    tokens=p.tokens,
                    price_cents=p.price_cents,
                    currency=p.currency,
                )
                for p in self.prices.packages()
            ]
        )

    async def EstimateCost(self, request: billing_pb2.EstimateCostRequest, context: Context) -> Any:
        if request.num_images < 0:
            raise ValidationError("num_images must be positive", field="num_images")
        quote = self.prices.estimate(request.model, request.quality, request.aspect_ratio, request.num_images)
        return billing_pb2.EstimateCostResponse(tokens=quote.tokens)

    async def CreatePurchase(self, request: billing_pb2.CreatePurchaseRequest, context: Context) -> Any:
        if not request.package_name:
            raise ValidationError("package_name is required", field="package_name")
        purchase, client_secret = await self.purchases.create(
            current_caller().user_id, request.package_name, idempotency_key(context)
        )
        return billing_pb2.CreatePurchaseResponse(
            purchase=purchase_proto(purchase), client_secret=client_secret
        )

    async def ListPurchases(self, request: billing_pb2.ListPurchasesRequest, context: Context) -> Any:
        size = paging.page_size(request.page_size)
        before = paging.decode_cursor(request.page_token)
        rows = await self.purchases.page(current_caller().user_id, before, size + 1)
        page = paging.page_of(rows, size, lambda row: paging.encode_cursor(row["created_at"], row["id"]))
        return billing_pb2.ListPurchasesResponse(
            purchases=[purchase_proto(row) for row in page.items], next_page_token=page.next_page_token
        )

    async def GetPurchase(self, request: billing_pb2.GetPurchaseRequest, context: Context) -> Any:
        return purchase_proto(await self.purchases.users_purchase(current_caller().user_id, request.id))

    async def HandleStripeWebhook(
        self, request: billing_pb2.HandleStripeWebhookRequest, context: Context
    ) -> Any:
        await self.purchases.handle_webhook(
            request.http_body.data, metadata_value(context, "stripe-signature")
        )
        return empty_pb2.Empty()

    # --- admin ---

    async def AdminGrantTokens(self, request: billing_pb2.AdminGrantTokensRequest, context: Context) -> Any:
        admin = current_caller().user_id
        key = idempotency_key(context) or str(uuid.uuid4())
        grant = await self.ledger.grant_tokens(
            request.user_id,
            request.amount,
            request.reason,
            f"admin-grant:{admin}:{key}",
            granted_by=admin,
            known_users_only=True,
        )
        return billing_pb2.AdminGrantTokensResponse(
            balance=grant.balance, transaction=transaction_proto(grant.transfer)
        )

    async def RefundPurchase(self, request: billing_pb2.RefundPurchaseRequest, context: Context) -> Any:
        return purchase_proto(await self.purchases.refund(request.id, request.reason))

    # --- internal ---

    async def ReserveTokens(self, request: billing_pb2.ReserveTokensRequest, context: Context) -> Any:
        ttl = request.expires_in.ToTimedelta() if request.HasField("expires_in") else None
        hold = await self.ledger.reserve_tokens(
            request.user_id,
            request.amount,
            request.generation_id,
            request.idempotency_key,
            ttl,
            request.reason,
        )
        return hold_proto(hold)

    async def CaptureHold(self, request: billing_pb2.CaptureHoldRequest, context: Context) -> Any:
        amount = request.amount if request.HasField("amount") else None
        return hold_proto(await self.ledger.capture_hold(request.hold_id, amount, request.idempotency_key))

    async def ReleaseHold(self, request: billing_pb2.ReleaseHoldRequest, context: Context) -> Any:
        return hold_proto(await self.ledger.release_hold(request.hold_id, request.reason))

    async def GrantTokens(self, request: billing_pb2.GrantTokensRequest, context: Context) -> Any:
        grant = await self.ledger.grant_tokens(
            request.user_id, request.amount, request.reason, request.idempotency_key
        )
        return billing_pb2.GrantTokensResponse(
            balance=grant.balance, transaction=transaction_proto(grant.transfer)
        )

    async def GrantWelcomeTokens(
        self, request: billing_pb2.GrantWelcomeTokensRequest, context: Context
    ) -> Any:
        async with self.ledger.db.transaction() as session:
            grant = await self.ledger.welcome_in(session, request.user_id)
        if grant is None:
            summary = await self.ledger.summary(request.user_id)
            return billing_pb2.GrantTokensResponse(balance=summary.balance.balance)
        return billing_pb2.GrantTokensResponse(
            balance=grant.balance, transaction=transaction_proto(grant.transfer)
        )

    async def GetUserBillingSummary(
        self, request: billing_pb2.GetUserBillingSummaryRequest, context: Context
    ) -> Any:
        if not request.user_id:
            raise ValidationError("user_id is required", field="user_id")
        summary = await self.ledger.summary(request.user_id)
        recent = await self.purchases.page(request.user_id, None, self.settings.recent_purchases_in_summary)
        return billing_pb2.GetUserBillingSummaryResponse(
            balance=summary.balance.balance,
            reserved=summary.balance.reserved,
            available=summary.balance.available,
            tokens_spent=summary.tokens_spent,
            tokens_purchased=summary.tokens_purchased,
            recent_purchases=[purchase_proto(row) for row in recent],
        )


# --- proto conversions ---


def transaction_proto(row: Row) -> resources_pb2.Transaction:
    kind = row["kind"]
    outgoing = kind in OUTGOING_KINDS or (
        kind == "ADJUSTMENT" and row["credit_account_id"] in SYSTEM_ACCOUNTS
    )
    return resources_pb2.Transaction(
        id=str(row["id"]),
        kind=resources_pb2.TransactionKind.Value(kind),
        amount=-row["amount"] if outgoing else row["amount"],
        balance_after=row["balance_after"],
        reason=row["reason"],
        generation_id=row["generation_id"] or "",
        purchase_id=str(row["purchase_id"] or ""),
        created_at=_timestamp(row["created_at"]),
    )


def purchase_proto(row: Row) -> resources_pb2.Purchase:
    purchase = resources_pb2.Purchase(
        id=str(row["id"]),
        package_name=row["package_name"],
        tokens=row["tokens"],
        amount_cents=row["amount_cents"],
        currency=row["currency"],
        status=resources_pb2.PurchaseStatus.Value(row["status"]),
        payment_intent_id=row["payment_intent_id"] or "",
        created_at=_timestamp(row["created_at"]),
    )
    if row["status"] == "FAILED":
        purchase.failure_code = row["failure_code"] or ""
        purchase.failure_reason = row["failure_message"] or row["failure_code"] or ""
    if row["completed_at"] is not None:
        purchase.completed_at.CopyFrom(_timestamp(row["completed_at"]))
    return purchase


def hold_proto(row: Row) -> resources_pb2.Hold:
    hold = resources_pb2.Hold(
        id=str(row["id"]),
        user_id=row["user_id"],
        generation_id=row["generation_id"],
        amount=row["amount"],
        captured_amount=row["captured_amount"],
        status=HOLD_STATUS[row["status"]],
        reason=row["reason"],
        created_at=_timestamp(row["created_at"]),
        expires_at=_timestamp(row["expires_at"]),
    )
    if row["resolved_at"] is not None:
        hold.resolved_at.CopyFrom(_timestamp(row["resolved_at"]))
    return hold


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def registrations(api: BillingApi) -> Sequence[Registration]:
    return [
        Registration(
            api,
            billing_pb2_grpc.add_BillingServiceServicer_to_server,
            billing_pb2.DESCRIPTOR.services_by_name["BillingService"],
        ),
    ]
