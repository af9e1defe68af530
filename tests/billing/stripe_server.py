"""A local server that speaks Stripe's REST format for PaymentIntents and Refunds.

Like Stripe it requires the secret key as a bearer token, reads form-encoded bodies
(``metadata[purchase_id]=...``), replays the first response for a repeated
``Idempotency-Key``, and delivers signed webhook events (``confirm`` a payment, and
``charge.refunded`` after a refund) to the endpoint it was given.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.billing.payments import sign_payload, stripe_event

Deliver = Callable[[bytes, str], Awaitable[None]]


class LocalStripe:
    def __init__(self, api_key: str, webhook_secret: str, port: int) -> None:
        self.api_key, self.webhook_secret, self.port = api_key, webhook_secret, port
        self.intents: dict[str, dict[str, Any]] = {}
        self.refunds: list[dict[str, Any]] = []
        self.idempotency_keys: list[str] = []
        self._replies: dict[str, dict[str, Any]] = {}
        self.failing = False
        self.deliver: Deliver | None = None
        app = Starlette(
            routes=[
                Route("/v1/payment_intents", self._create_intent, methods=["POST"]),
                Route("/v1/payment_intents/{id}", self._get_intent, methods=["GET"]),
                Route("/v1/refunds", self._create_refund, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task

    async def confirm(self, intent_id: str) -> None:
        """The customer paid: Stripe sends payment_intent.succeeded."""
        intent = self.intents[intent_id] | {"status": "succeeded"}
        intent["amount_received"] = intent["amount"]
        self.intents[intent_id] = intent
        await self._send(stripe_event("payment_intent.succeeded", intent))

    async def _send(self, event: dict[str, Any]) -> None:
        assert self.deliver is not None, "no webhook endpoint configured"
        payload = json.dumps(event).encode()
        await self.deliver(payload, sign_payload(payload, self.webhook_secret))

    # --- the REST API ---

    def _refuse(self, request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        if self.failing:
            return _error(500, "api_error", "Something went wrong on Stripe's end")
        return None

    async def _create_intent(self, request: Request) -> JSONResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key", "")
        self.idempotency_keys.append(key)
        if key in self._replies:
            return JSONResponse(self._replies[key])
        form = await request.form()
        intent_id = f"pi_{uuid.uuid4().hex[:24]}"
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(str(form["amount"])),
            "amount_received": 0,
            "currency": str(form["currency"]),
            "status": "requires_payment_method",
            "client_secret": f"{intent_id}_secret_{uuid.uuid4().hex[:16]}",
            "created": int(time.time()),
            "livemode": False,
            "metadata": {
                k[len("metadata[") : -1]: str(v) for k, v in form.items() if k.startswith("metadata[")
            },
        }
        self.intents[intent_id] = intent
        if key:
            self._replies[key] = intent
        return JSONResponse(intent)

    async def _get_intent(self, request: Request) -> JSONResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        intent = self.intents.get(request.path_params["id"])
        return (
            JSONResponse(intent) if intent else _error(404, "invalid_request_error", "No such payment_intent")
        )

    async def _create_refund(self, request: Request) -> JSONResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        key = request.headers.get("idempotency-key", "")
        self.idempotency_keys.append(key)
        if key in self._replies:
            return JSONResponse(self._replies[key])
        form = await request.form()
        intent = self.intents.get(str(form.get("payment_intent", "")))
        if intent is None or intent["status"] != "succeeded":
            return _error(
                400, "invalid_request_error", "This PaymentIntent has no successful charge to refund"
            )
        charge_id = f"ch_{intent['id'][3:]}"
        refund = {
            "id": f"re_{uuid.uuid4().hex[:24]}",
            "object": "refund",
            "amount": intent["amount"],
            "charge": charge_id,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "status": "succeeded",
            "metadata": {
                k[len("metadata[") : -1]: str(v) for k, v in form.items() if k.startswith("metadata[")
            },
        }
        self.refunds.append(refund)
        if key:
            self._replies[key] = refund
        charge = {
            "id": charge_id,
            "object": "charge",
            "amount": intent["amount"],
            "amount_refunded": intent["amount"],
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "refunded": True,
            "metadata": intent["metadata"],
        }
        # Stripe sends the event on its own schedule, after answering the API call.
        asyncio.get_running_loop().call_later(
            0.05, lambda: asyncio.ensure_future(self._send(stripe_event("charge.refunded", charge)))
        )
        return JSONResponse(refund)


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)
