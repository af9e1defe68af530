"""A local server that speaks Replicate's predictions API and signs its webhooks, for tests.

Written from Replicate's HTTP API, not from the SDK: ``POST /v1/predictions`` (version,
input, webhook, webhook_events_filter; ``Authorization: Bearer``), ``GET
/v1/predictions/{id}``, ``POST /v1/predictions/{id}/cancel``, prediction objects with
``urls.get``/``urls.cancel``, outputs as URLs served here. Webhooks follow the Standard
Webhooks scheme Replicate uses: ``webhook-id``, ``webhook-timestamp`` (Unix seconds),
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with
the base64 part of the ``whsec_`` secret. A prediction stays ``processing`` until the
test finishes it, with or without a webhook; with ``complete_after`` set (the soak runs it so),
the server finishes each prediction itself: a "start" webhook at once, then after that many
seconds the prediction succeeds with output URLs served here and its "completed" webhook is
sent. Every webhook sent is kept in ``sent`` (body and id), so it can be delivered again,
re-signed with a fresh timestamp (``redeliver``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness.platform import free_port

log = logging.getLogger("tests.replicate_server")
RUNNING = ("starting", "processing")


@dataclass(frozen=True)
class SentWebhook:
    """A webhook as the server sent it: enough to send it again, re-signed."""

    prediction_id: str
    url: str
    webhook_id: str
    status: str
    body: bytes
    sent_at: float


@dataclass
class FakeReplicate:
    api_token: str = "r8_test_token_for_the_fake_server"
    secret: str = "whsec_" + base64.b64encode(b"replicate-test-signing-key-32by!").decode()
    port: int = field(default_factory=free_port)
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    canceled: list[str] = field(default_factory=list)
    unauthorized: int = 0
    # Send the "start" webhook before answering the create request, as a fast Replicate can:
    # the webhook then races the service's saving of the prediction id.
    start_webhook_before_answering: bool = False
    # Run with each new prediction before the create request is answered (a test's way to
    # have something happen while the service waits for Replicate's answer).
    before_answering: Callable[[str], Awaitable[None]] | None = None
    # Seconds after which the server itself succeeds a prediction and sends its webhooks
    # ("start" at once, "completed" then); None: a test finishes each prediction.
    complete_after: float | None = None
    # Every webhook sent, in order (appended from the server's thread).
    sent: list[SentWebhook] = field(default_factory=list, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prediction(self, prediction: dict[str, Any]) -> dict[str, Any]:
        shown = {key: value for key, value in prediction.items() if not key.startswith("_")}
        shown["urls"] = {
            "get": f"{self.url}/v1/predictions/{prediction['id']}",
            "cancel": f"{self.url}/v1/predictions/{prediction['id']}/cancel",
        }
        return shown

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/predictions", self._create, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/outputs/{id}/{index}.png", self._output, methods=["GET"]),
            ]
        )

    def _authorized(self, request: Request) -> bool:
        if request.headers.get("authorization") == f"Bearer {self.api_token}":
            return True
        self.unauthorized += 1
        return False

    async def _create(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"title": "Unauthenticated", "status": 401, "detail": "bad token"}, 401)
        body = await request.json()
        if not isinstance(body.get("version"), str) or not isinstance(body.get("input"), dict):
            return JSONResponse({"title": "Invalid", "status": 422, "detail": "version and input"}, 422)
        prediction = {
            "id": uuid.uuid4().hex[:26],
            "model": "stylestudio/fake",
            "version": body["version"],
            "status": "processing",
            "input": body["input"],
            "output": None,
            "error": None,
            "logs": "",
            "metrics": {},
            "created_at": datetime.now(UTC).isoformat(),
            "started_at": datetime.now(UTC).isoformat(),
            "completed_at": None,
            "_webhook": body.get("webhook"),
            "_webhook_events_filter": body.get("webhook_events_filter"),
        }
        self.predictions[prediction["id"]] = prediction
        if self.start_webhook_before_answering and prediction["_webhook"]:
            await self.send_webhook(prediction["id"])
        if self.before_answering is not None:
            await self.before_answering(prediction["id"])
        if self.complete_after is not None:
            task = asyncio.create_task(self._complete(prediction["id"], self.complete_after))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse(self._prediction(prediction), 201)

    async def _complete(self, prediction_id: str, after: float) -> None:
        """What Replicate does with a prediction: start it, run it, succeed, telling the webhook."""
        prediction = self.predictions[prediction_id]
        events = prediction["_webhook_events_filter"] or ["start", "output", "logs", "completed"]
        if prediction["_webhook"] and "start" in events:
            await self._try_webhook(prediction_id)
        await asyncio.sleep(after)
        if prediction["status"] not in RUNNING:  # cancelled meanwhile
            return
        self.succeed(prediction_id)
        if prediction["_webhook"] and "completed" in events:
            await self._try_webhook(prediction_id)

    async def _try_webhook(self, prediction_id: str) -> None:
        try:
            await self.send_webhook(prediction_id)
        except httpx.HTTPError as error:  # the receiver is down: Replicate's poll finds it later
            log.warning("a webhook was not delivered: %s", type(error).__name__)

    async def _get(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"title": "Unauthenticated", "status": 401, "detail": "bad token"}, 401)
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return JSONResponse({"title": "Not found", "status": 404, "detail": "no such prediction"}, 404)
        return JSONResponse(self._prediction(prediction))

    async def _cancel(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"title": "Unauthenticated", "status": 401, "detail": "bad token"}, 401)
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return JSONResponse({"title": "Not found", "status": 404, "detail": "no such prediction"}, 404)
        self.canceled.append(prediction["id"])
        if prediction["status"] in ("starting", "processing"):
            prediction["status"] = "canceled"
        return JSONResponse(self._prediction(prediction))

    async def _output(self, request: Request) -> Response:
        prediction = self.predictions.get(request.path_params["id"])
        if prediction is None:
            return Response(status_code=404)
        seed = int(request.path_params["index"]) * 40
        out = io.BytesIO()
        Image.new("RGB", (64, 48), (seed, 120, 200)).save(out, format="PNG")
        return Response(out.getvalue(), media_type="image/png")

    # --- what a test does -----------------------------------------------------------------

    def succeed(self, prediction_id: str) -> dict[str, Any]:
        prediction = self.predictions[prediction_id]
        count = int(prediction["input"].get("num_outputs", 1))
        prediction["output"] = [f"{self.url}/outputs/{prediction_id}/{i}.png" for i in range(count)]
        prediction["status"] = "succeeded"
        prediction["completed_at"] = datetime.now(UTC).isoformat()
        return self._prediction(prediction)

    def fail(self, prediction_id: str, error: str = "CUDA out of memory") -> dict[str, Any]:
        prediction = self.predictions[prediction_id]
        prediction["status"], prediction["error"] = "failed", error
        prediction["completed_at"] = datetime.now(UTC).isoformat()
        return self._prediction(prediction)

    def sign(self, webhook_id: str, timestamp: int, body: bytes) -> str:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{webhook_id}.{timestamp}.".encode() + body
        return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()

    async def send_webhook(
        self,
        prediction_id: str,
        payload: dict[str, Any] | None = None,
        *,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> httpx.Response:
        """POST the prediction (or ``payload``) to the webhook URL it was created with, signed."""
        prediction = self.predictions[prediction_id]
        shown = payload if payload is not None else self._prediction(prediction)
        body = json.dumps(shown).encode()
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
        url = prediction["_webhook"]
        sent = SentWebhook(prediction_id, url, webhook_id, str(shown.get("status", "")), body, time.time())
        self.sent.append(sent)
        return await self._post(sent, webhook_id, timestamp, signature)

    async def redeliver(self, sent: SentWebhook, webhook_id: str | None = None) -> httpx.Response:
        """``sent`` once more, signed anew with the current time (under its own id, or ``webhook_id``)."""
        return await self._post(sent, webhook_id or sent.webhook_id)

    async def _post(
        self, sent: SentWebhook, webhook_id: str, timestamp: int | None = None, signature: str | None = None
    ) -> httpx.Response:
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature or self.sign(webhook_id, timestamp, sent.body),
        }
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await client.post(sent.url, content=sent.body, headers=headers)


class ReplicateServer:
    """The fake server on its own thread."""

    def __init__(self, fake: FakeReplicate) -> None:
        self.fake = fake
        config = uvicorn.Config(self.fake.app(), host="127.0.0.1", port=self.fake.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake Replicate server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5)
