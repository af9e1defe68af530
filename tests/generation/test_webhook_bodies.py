"""Replicate's webhook bodies, once signed, are parsed into a strict model: a body of the wrong
JSON types, with a control character in the prediction id, or nested 5,000 levels deep is a
VALIDATION_ERROR naming the field, never a 500 (the same rule as Stripe's events)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from kit.errors import ValidationError
from services.generation.webhooks import Prediction, verify_signature
from tests.generation.replicate_server import FakeReplicate
from tests.harness import Platform

SECRET = FakeReplicate.secret
PREDICTION_ID = "rrr4z55ocneqzikepnug6xezpe"
PREDICTION: dict[str, object] = {"id": PREDICTION_ID, "status": "succeeded", "input": {"prompt": "a coat"}}


def signed_headers(body: bytes) -> dict[str, str]:
    webhook_id, now = f"msg_{uuid.uuid4().hex}", int(time.time())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(now),
        "webhook-signature": FakeReplicate().sign(webhook_id, now, body),
    }


def parse(body: bytes) -> Prediction:
    return verify_signature(signed_headers(body), body, SECRET, 300)


def test_a_prediction_is_read_and_what_the_service_does_not_read_is_ignored() -> None:
    body = json.dumps(PREDICTION | {"output": ["https://x/y.png"], "metrics": {"predict_time": 1.5}}).encode()
    assert parse(body) == Prediction(id=PREDICTION_ID, status="succeeded", input={"prompt": "a coat"})


BAD_BODIES = {
    "id a number": (json.dumps(PREDICTION | {"id": 5}).encode(), "id"),
    "id with a NUL": (json.dumps(PREDICTION | {"id": "abc\u0000"}).encode(), "id"),
    "no id": (json.dumps({"status": "succeeded"}).encode(), "id"),
    "status a list": (json.dumps(PREDICTION | {"status": ["succeeded"]}).encode(), "status"),
    "status with a control character": (json.dumps(PREDICTION | {"status": "fail\u0007"}).encode(), "status"),
    "input a string": (json.dumps(PREDICTION | {"input": "a coat"}).encode(), "input"),
    "a list": (b"[1, 2]", "body"),
    "not JSON": (b"{not json", "body"),
    "5,000 levels of lists": (b'{"id": "a", "input": {"k": ' + b"[" * 5000 + b"]" * 5000 + b"}}", "body"),
    "5,000 levels of objects": (b'{"a":' * 5000 + b"1" + b"}" * 5000, "body"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_a_signed_body_that_is_not_a_prediction_is_a_validation_error_naming_the_field(name: str) -> None:
    body, field = BAD_BODIES[name]
    with pytest.raises(ValidationError) as refused:
        parse(body)
    assert refused.value.details["field"] == field
    assert "\u0000" not in str(refused.value)


async def test_a_signed_body_nested_5000_levels_deep_is_a_400_through_the_gateway(
    gen_platform: Platform,
) -> None:
    body = BAD_BODIES["5,000 levels of lists"][0]
    headers = {"content-type": "application/json", **signed_headers(body)}
    async with httpx.AsyncClient(base_url=gen_platform.gateway_url, timeout=30.0) as client:
        answered = await client.post("/webhooks/replicate", content=body, headers=headers)
    assert answered.status_code == 400, answered.text
    assert answered.json()["error"]["reason"] == "VALIDATION_ERROR"
