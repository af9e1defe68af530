"""Style Studio's load: weighted user journeys against the gateway (Locust).

Run it through ``python -m bench.load`` (docs/operations.md, "Load testing"). Each simulated
user signs up, then loops over journeys picked by weight: create (upload, estimate,
generate with an Idempotency-Key sometimes retried, watch over SSE, download), batch,
purchase (offline payment completed by a signed Stripe webhook), browse (history,
dashboard, metrics, usage, /metrics), cancel, session (refresh, log in again), admin
(system analytics, with ``STYLESTUDIO_LOAD_ADMIN_TOKEN``). Every request carries the W3C
baggage ``stylestudio.synthetic=true``, so analytics keeps the traffic apart.

A user out of tokens or past its plan's hourly generation limit signs up again (a newcomer).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, events, task
from locust.env import Environment
from PIL import Image

from bench.load.calls import Answer, PoliteCalls
from bench.load.report import LoadRecorder
from bench.load.webhooks import (
    STRIPE_WEBHOOK_ROUTE,
    WEBHOOK_SECRET_ENV,
    development_webhook_secret,
    payment_succeeded_payload,
    webhook_headers,
)
from kit.telemetry import BAGGAGE_HEADER, SYNTHETIC_BAGGAGE

ADMIN_TOKEN_ENV = "STYLESTUDIO_LOAD_ADMIN_TOKEN"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
DRAFT = {
    "model": "stable-diffusion-xl",
    "style": "fashion",
    "quality": "draft",
    "aspectRatio": "1:1",
    "numImages": 1,
}
WATCH_SECONDS = 45.0
PURCHASE_WAIT_SECONDS = 15.0
# Answers that end a journey without it failing: the platform refused for a business reason.
# Every other sign-up is moved to pro (with an admin token), so batches run in every run.
_SIGN_UPS = itertools.count()
_REFUSALS = frozenset({"INSUFFICIENT_TOKENS", "RATE_LIMITED", "QUOTA_EXCEEDED", "FEATURE_NOT_IN_PLAN"})

# How often each journey is picked once a user has toured them all ("admin" needs an admin token).
JOURNEY_WEIGHTS = {"create": 5, "browse": 3, "purchase": 1, "batch": 1, "cancel": 1, "session": 1, "admin": 1}

recorder: LoadRecorder | None = None


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--out", type=str, default="load-report", help="where the report is written")
    parser.add_argument(
        "--models",
        type=str,
        default=DRAFT["model"],
        help="image models the generations pick from, comma-separated (a name twice: twice as often)",
    )


@events.init.add_listener
def _start_recording(environment: Environment, **_: Any) -> None:
    global recorder
    options = environment.parsed_options
    recorder = LoadRecorder(Path(options.out if options is not None else "load-report"))


@events.quitting.add_listener
def _write_report(environment: Environment, **_: Any) -> None:
    if recorder is not None:
        options = environment.parsed_options
        recorder.write(users=options.num_users if options is not None else None)


def _image(fmt: str, size: tuple[int, int]) -> bytes:
    colour = tuple(random.randrange(256) for _ in range(3))
    picture = Image.new("RGB", size, colour)
    for x in range(0, size[0], 8):  # a few stripes, so it is not a flat colour
        for y in range(size[1]):
            picture.putpixel((x, y), (255 - colour[0], colour[1], 255 - colour[2]))
    out = io.BytesIO()
    picture.save(out, format=fmt)
    return out.getvalue()


PRODUCT_IMAGES = [_image("PNG", (96, 128)) for _ in range(4)]
MODEL_IMAGES = [_image("JPEG", (128, 160)) for _ in range(4)]


class JourneyFailed(Exception):
    """The platform answered something a journey does not accept (recorded with the answer)."""


class Refused(Exception):
    """The platform refused for a business reason (tokens, plan, limits): a journey ends early."""


class StyleStudioUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        assert recorder is not None
        self.recorder = recorder
        self.client.headers[BAGGAGE_HEADER] = SYNTHETIC_BAGGAGE
        self.api = PoliteCalls(self.client, recorder)
        self.webhook_secret = os.environ.get(WEBHOOK_SECRET_ENV) or development_webhook_secret()
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV, "")
        self.password = f"load pass {uuid.uuid4().hex[:12]}"
        self.email = ""
        self.refresh_token = ""
        self.user_id = ""
        self.generations: list[str] = []
        self.tour: list[str] | None = None
        options = self.environment.parsed_options
        names = str(options.models if options is not None else DRAFT["model"])
        self.models = [name.strip() for name in names.split(",") if name.strip()] or [names]
        self._journey("signup", self._sign_up)

    # --- journeys ------------------------------------------------------------------------------

    @task
    def next_journey(self) -> None:
        """Each user tours every journey once (so a short run covers them all), then picks by weight."""
        weights = {
            kind: weight for kind, weight in JOURNEY_WEIGHTS.items() if kind != "admin" or self.admin_token
        }
        if self.tour is None:
            self.tour = list(weights)
            random.shuffle(self.tour)
        kind = self.tour.pop() if self.tour else random.choices(list(weights), list(weights.values()))[0]
        self._journey(kind, getattr(self, f"_{kind}"))

    def _journey(self, kind: str, steps: Any) -> None:
        try:
            steps()
        except Refused as refusal:
            self.recorder.journey(kind, completed=False, why=str(refusal), refused=True)
            if str(refusal) in ("INSUFFICIENT_TOKENS", "RATE_LIMITED"):
                self._journey("signup", self._sign_up)  # a newcomer takes this user's place
        except JourneyFailed as failure:
            self.recorder.journey(kind, completed=False, why=str(failure))
        else:
            self.recorder.journey(kind, completed=True)

    def _parameters(self) -> dict[str, Any]:
        """A draft's parameters, on one of the models the run picks from."""
        return DRAFT | {"model": random.choice(self.models)}

    def _sign_up(self) -> None:
        self.email = f"load-{uuid.uuid4().hex}@example.com"
        body = {"email": self.email, "password": self.password, "name": "Load Tester"}
        self._signed_in(self._expect(self.api.call("POST", "/v1/auth/signup", json=body, auth=False)))
        self.generations = []
        if self.admin_token and next(_SIGN_UPS) % 2 == 0:  # half the users on pro, so batches run
            answer = self.api.call(
                "PATCH",
                "/v1/admin/users/{id}",
                f"/v1/admin/users/{self.user_id}",
                json={"plan": "pro"},
                auth=False,
                headers={"Authorization": f"Bearer {self.admin_token}"},
            )
            self._expect(answer)
            self._refresh()  # the plan travels in the access token

    def _create(self) -> None:
        product = self._upload("product_image", PRODUCT_IMAGES)
        models = [self._upload("model_image", MODEL_IMAGES)] if random.random() < 0.4 else []
        parameters = self._parameters()
        estimate = {key: parameters[key] for key in ("model", "quality", "aspectRatio", "numImages")}
        self._expect(self.api.call("POST", "/v1/billing/estimate", json=estimate))
        request = {
            "productImageFiles": [product],
            "modelImageFiles": models,
            "prompt": "a model wearing the product, city street",
            "parameters": parameters,
        }
        key = uuid.uuid4().hex
        generation = self._start(request, key)
        if random.random() < 0.3:  # a client retrying after a lost answer gets the same generation
            again = self._start(request, key)
            if again["id"] != generation["id"]:
                raise JourneyFailed(f"Idempotency-Key retried: {again['id']} != {generation['id']}")
        final = self._watch(generation["id"])
        if final == "COMPLETED":
            found = self._expect(
                self.api.call("GET", "/v1/generations/{id}", f"/v1/generations/{generation['id']}")
            )
            for file_id in found.get("resultImageFiles", [])[:1]:
                self._expect(self.api.call("GET", "/v1/files/{id}/content", f"/v1/files/{file_id}/content"))

    def _batch(self) -> None:
        product = self._upload("product_image", PRODUCT_IMAGES)
        one = {
            "productImageFiles": [product],
            "prompt": "studio shot of the product",
            "parameters": self._parameters(),
        }
        answer = self.api.call("POST", "/v1/generations:batch", json={"requests": [one, one]})
        results = self._expect(answer).get("results", [])
        started = [r["generation"]["id"] for r in results if "generation" in r]
        if not started and results:
            raise Refused(str(results[0].get("error", {}).get("reason", "")))
        for generation_id in started:
            self._watch(generation_id)

    def _purchase(self) -> None:
        packages = self._expect(self.api.call("GET", "/v1/billing/packages")).get("packages", [])
        name = "starter" if any(p["name"] == "starter" for p in packages) else packages[0]["name"]
        key = {"Idempotency-Key": uuid.uuid4().hex}
        created = self._expect(
            self.api.call("POST", "/v1/billing/purchases", json={"packageName": name}, headers=key)
        )
        purchase = created["purchase"]
        payload = payment_succeeded_payload(purchase)
        self.recorder.webhook(payload, purchase["id"])
        self._expect(
            self.api.call(
                "POST",
                STRIPE_WEBHOOK_ROUTE,
                data=payload.encode(),
                headers=webhook_headers(payload, self.webhook_secret),
                auth=False,
            )
        )
        waited = 0.0
        while True:
            # The list, newest first (GET /v1/billing/purchases/{id} is not served yet).
            listed = self._expect(self.api.call("GET", "/v1/billing/purchases", params={"pageSize": 5}))
            mine = [p for p in listed.get("purchases", []) if p["id"] == purchase["id"]]
            if mine and mine[0].get("status") == "COMPLETED":
                break
            if waited >= PURCHASE_WAIT_SECONDS:
                raise JourneyFailed(f"purchase {purchase['id']} not COMPLETED after {waited:.0f} s")
            gevent.sleep(0.5)
            waited += 0.5
        self._expect(self.api.call("GET", "/v1/billing/balance"))

    def _browse(self) -> None:
        self._expect(self.api.call("GET", "/v1/generations", params={"pageSize": 10}))
        self._expect(self.api.call("GET", "/v1/dashboard"))
        self._expect(self.api.call("GET", "/v1/analytics/metrics", params={"window": "24h"}))
        self._expect(self.api.call("GET", "/v1/analytics/usage", params={"pageSize": 20}))
        self._expect(self.api.call("GET", "/v1/billing/transactions", params={"pageSize": 20}))
        self._expect(self.api.call("GET", "/v1/files", params={"pageSize": 20}))
        self._expect(self.api.call("GET", "/v1/users/me/stats"))
        if random.random() < 0.2:
            self._expect(self.api.call("GET", "/metrics", auth=False))

    def _cancel(self) -> None:
        product = self._upload("product_image", PRODUCT_IMAGES)
        request = {
            "productImageFiles": [product],
            "prompt": "the product on a beach",
            "parameters": self._parameters(),
        }
        generation = self._start(request, uuid.uuid4().hex)
        path = f"/v1/generations/{generation['id']}:cancel"
        answer = self.api.call("POST", "/v1/generations/{id}:cancel", path)
        # It may have finished first: cancelling a terminal generation is a precondition failure.
        finished_first = answer.status == 400 and answer.reason in ("FAILED_PRECONDITION", "CONFLICT")
        if not answer.ok and not finished_first:
            raise JourneyFailed(f"cancel: {answer.describe()}")

    def _session(self) -> None:
        self._refresh()
        body = {"email": self.email, "password": self.password}
        self._signed_in(self._expect(self.api.call("POST", "/v1/auth/login", json=body, auth=False)))
        self._expect(self.api.call("GET", "/v1/users/me"))

    def _admin(self) -> None:
        answer = self.api.call(
            "GET",
            "/v1/analytics/system",
            params={"window": "7d"},
            auth=False,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        self._expect(answer)

    # --- steps ---------------------------------------------------------------------------------

    def _signed_in(self, body: dict[str, Any]) -> None:
        self.api.token = body["accessToken"]
        self.refresh_token = body["refreshToken"]
        self.user_id = body["user"]["id"]

    def _refresh(self) -> None:
        body = {"refreshToken": self.refresh_token}
        self._signed_in(self._expect(self.api.call("POST", "/v1/auth/refresh", json=body, auth=False)))

    def _upload(self, category: str, images: list[bytes]) -> str:
        content = random.choice(images)
        name, kind = ("p.png", "image/png") if content.startswith(b"\x89PNG") else ("m.jpg", "image/jpeg")
        answer = self.api.call(
            "POST", "/v1/files", files={"file": (name, content, kind)}, data={"category": category}
        )
        return str(self._expect(answer)["id"])

    def _start(self, request: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        answer = self.api.call(
            "POST", "/v1/generations", json=request, headers={"Idempotency-Key": idempotency_key}
        )
        generation = self._expect(answer)
        self.generations.append(generation["id"])
        return generation

    def _watch(self, generation_id: str) -> str:
        """Follow a generation's SSE stream to its terminal status (returns it)."""
        path = f"/v1/generations/{generation_id}:watch"
        answer = self.api.call("GET", "/v1/generations/{id}:watch", path, stream=True)
        if not answer.ok:
            raise JourneyFailed(f"watch: {answer.describe()}")
        status = ""
        with gevent.Timeout(WATCH_SECONDS, JourneyFailed(f"watch: not terminal after {WATCH_SECONDS:.0f} s")):
            try:
                for line in answer.response.iter_lines():
                    if line.startswith(b"data:"):
                        event = json.loads(line[5:])
                        status = event.get("generation", event).get("status", "")
                        if status in TERMINAL:
                            return str(status)
            finally:
                answer.response.close()
        raise JourneyFailed(f"watch of {generation_id} ended at {status or 'no event'}")

    def _expect(self, answer: Answer) -> Any:
        if answer.ok:
            return answer.body if answer.body is not None else {}
        if answer.reason in _REFUSALS:
            raise Refused(answer.reason)
        raise JourneyFailed(answer.describe())
