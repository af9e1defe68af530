"""A client generated from the live /openapi.json works as is (docs/clients.md).

As an integrator would: the running gateway's document validates (openapi-spec-validator),
`openapi-python-client generate --fail-on-warning` makes a package of it, and that package,
untouched, walks a newcomer's journey: sign-up, balance, upload (retried with its
Idempotency-Key), estimate, create (retried too, with the rate-limit headers), watch (the
stream's text once the generation ends), poll, transactions, download (and its 304), the
signed link with no credentials, and the errors a client has to handle (404, 401 with its
challenge).
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image

from tests.harness import Platform
from tests.harness.rest import PASSWORD, schema_validator

PACKAGE = "style_studio_api_client"  # what the generator names the package of "Style Studio API"
GENERATOR = Path(sys.executable).parent / "openapi-python-client"
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF")


@pytest.fixture(scope="module")
async def document(platform: Platform) -> dict[str, Any]:
    """What the gateway serves as /openapi.json, valid OpenAPI."""
    async with platform.client() as gateway:
        served = (await gateway.get("/openapi.json")).json()
    validate(served)
    return dict(served)


@pytest.fixture(scope="module")
async def generated(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The client package generated from that document, imported from where it was written."""
    directory = tmp_path_factory.mktemp("generated-client")
    spec = directory / "openapi.json"
    spec.write_text(json.dumps(document))
    # The generator formats its output with ruff, found on PATH: the one of this environment.
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(GENERATOR), "generate", "--path", str(spec), "--output-path", str(directory / PACKAGE),
        "--meta", "none", "--fail-on-warning",
    ]  # fmt: skip
    result = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(directory))


class Api:
    """The generated package's modules, found by the names the document gives them."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package

    def op(self, operation_id: str) -> Any:
        """``files.upload`` -> the module ``api/files/files_upload.py``."""
        collection, verb = operation_id.split(".")
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in f"{collection}_{verb}")
        tag = "".join(f"_{c.lower()}" if c.isupper() else c for c in collection)
        return importlib.import_module(f"{self.package.__name__}.api.{tag}.{snake}")

    def model(self, name: str) -> Any:
        return getattr(importlib.import_module(f"{self.package.__name__}.models"), name)

    @property
    def types(self) -> Any:
        return importlib.import_module(f"{self.package.__name__}.types")


@pytest.fixture
def api(generated: ModuleType) -> Iterator[Api]:
    yield Api(generated)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (240, 320), (40, 90, 160)).save(out, format="JPEG")
    return out.getvalue()


def _events(stream: str) -> list[tuple[str, str]]:
    """(event name, data) of each event of a text/event-stream, comments skipped."""
    events = []
    for block in stream.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields.get("event", "message"), fields["data"]))
    return events


async def test_the_generated_client_walks_the_whole_journey(
    api: Api, platform: Platform, document: dict[str, Any]
) -> None:
    anonymous = api.package.Client(base_url=platform.gateway_url, timeout=httpx.Timeout(60.0))

    signup = api.op("auth.signup")
    email = f"generated.{uuid.uuid4().hex[:12]}@example.com"
    body = api.model("SignupRequest")(email=email, password=PASSWORD, name="Generated Client")
    signed_up = await signup.asyncio_detailed(client=anonymous, body=body)
    assert signed_up.status_code == 200, signed_up.content
    assert signed_up.headers["x-request-id"] and len(signed_up.headers["x-trace-id"]) == 32
    client = api.package.AuthenticatedClient(
        base_url=platform.gateway_url, token=signed_up.parsed.access_token, timeout=httpx.Timeout(60.0)
    )

    balance = await api.op("billing.getBalance").asyncio(client=client)
    assert int(balance.available) > 0  # the welcome grant, there when sign-up answered

    File = api.types.File
    upload_key = f"upload-{uuid.uuid4()}"

    def form() -> Any:
        image = File(payload=io.BytesIO(_jpeg()), file_name="shirt.jpg", mime_type="image/jpeg")
        return api.model("FilesUploadBody")(category="product_image", file=image)

    upload = api.op("files.upload")
    uploaded = await upload.asyncio(client=client, body=form(), idempotency_key=upload_key)
    assert uploaded.category == "product_image" and uploaded.width == 240, uploaded
    again = await upload.asyncio(client=client, body=form(), idempotency_key=upload_key)
    assert again.id == uploaded.id  # the retry got the first upload, not a second file

    parameters = api.model("GenerationParameters")(quality="draft", num_images=1)
    estimate_body = api.model("EstimateCostRequest")(quality="draft", num_images=1)
    estimate = await api.op("billing.estimate").asyncio(client=anonymous, body=estimate_body)
    assert int(estimate.tokens) > 0

    create = api.op("generations.create")
    request = api.model("CreateGenerationRequest")(
        product_image_files=[uploaded.id],
        prompt="a linen shirt on a studio background",
        parameters=parameters,
    )
    create_key = f"generation-{uuid.uuid4()}"
    created = await create.asyncio_detailed(client=client, body=request, idempotency_key=create_key)
    assert created.status_code == 200, created.content
    generation = created.parsed
    assert int(created.headers["x-ratelimit-limit"]) > int(created.headers["x-ratelimit-remaining"]) >= 0
    retried = await create.asyncio(client=client, body=request, idempotency_key=create_key)
    assert retried.id == generation.id  # one generation, charged once

    stream = await api.op("generations.watch").asyncio(client=client, id=generation.id)
    assert isinstance(stream, str), stream
    events = _events(stream)
    assert events and all(name == "message" for name, _ in events), stream
    watch = document["paths"]["/v1/generations/{id}:watch"]["get"]["responses"]["200"]
    event_schema = watch["content"]["text/event-stream"]["x-event-schemas"]["message"]
    for _, data in events:
        schema_validator(document, event_schema).validate(json.loads(data))  # the documented schema
    Generation = api.model("Generation")
    watched = [Generation.from_dict(json.loads(data)) for _, data in events]
    assert {item.id for item in watched} == {generation.id}
    assert watched[-1].status.value == "COMPLETED", stream  # the stream ended after the terminal event

    polled = await api.op("generations.get").asyncio(client=client, id=generation.id)
    assert polled.status.value == "COMPLETED" and polled.result_image_files

    transactions = await api.op("transactions.list").asyncio(client=client)
    kinds = {transaction.kind.value for transaction in transactions.transactions}
    assert {"GRANT", "HOLD", "CAPTURE"} <= kinds, kinds
    assert all(t.generation_id == generation.id for t in transactions.transactions if t.kind.value == "HOLD")
    assert len([t for t in transactions.transactions if t.kind.value == "HOLD"]) == 1

    download = api.op("files.download")
    result_id = polled.result_image_files[0]
    downloaded = await download.asyncio_detailed(client=client, id=result_id)
    assert downloaded.status_code == 200
    assert downloaded.headers["content-type"] in ("image/jpeg", "image/png", "image/webp")
    content = downloaded.parsed.payload.read()
    assert content.startswith(IMAGE_MAGIC), content[:8]
    unchanged = await download.asyncio_detailed(
        client=client, id=result_id, if_none_match=downloaded.headers["etag"]
    )
    assert unchanged.status_code == 304 and unchanged.content == b""

    details = await api.op("files.get").asyncio(client=client, id=result_id)
    async with httpx.AsyncClient(base_url=platform.gateway_url, verify=platform.gateway_verify) as browser:
        shared = await browser.get(details.url)  # as an <img src> would: no Authorization
    assert shared.status_code == 200 and shared.content == content


async def test_the_generated_client_gets_errors_as_the_error_model(api: Api, platform: Platform) -> None:
    anonymous = api.package.Client(base_url=platform.gateway_url)
    get_balance = api.op("billing.getBalance")

    refused = await get_balance.asyncio_detailed(client=anonymous)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="stylestudio"'
    assert refused.parsed.error.reason == "UNAUTHORIZED"

    forged = api.package.AuthenticatedClient(base_url=platform.gateway_url, token="not-a-real-token")
    refused = await get_balance.asyncio_detailed(client=forged)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="stylestudio", error="invalid_token"'

    signup = api.op("auth.signup")
    email = f"generated.{uuid.uuid4().hex[:12]}@example.com"
    body = api.model("SignupRequest")(email=email, password=PASSWORD, name="Generated Client")
    token = (await signup.asyncio(client=anonymous, body=body)).access_token
    client = api.package.AuthenticatedClient(base_url=platform.gateway_url, token=token)
    missing = await api.op("generations.get").asyncio_detailed(client=client, id=str(uuid.uuid4()))
    assert missing.status_code == 404
    assert isinstance(missing.parsed, api.model("Error"))
    assert missing.parsed.error.reason == "NOT_FOUND" and missing.parsed.error.code == 404

    # A required field left out is caught by the generated model before any call is made.
    with pytest.raises(TypeError):
        api.model("FilesUploadBody")(file=api.types.File(payload=io.BytesIO(b"x")))
