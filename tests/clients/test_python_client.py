"""The client package for internal callers (docs/clients.md): `make dist` builds its wheel, which
installs into a fresh virtualenv with nothing of the platform's code, and its example, run from
there as the `operator` identity with its own key, starts a generation for a user on the running
platform and watches it to COMPLETED. The helper's credential is the one the kit verifies, and its
calls carry a deadline and the caller's trace context."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from PIL import Image

from kit import clients as kit_clients
from kit.auth import ServiceCredentials
from kit.service_keys import PublicKeySet, generate_signing_identity
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc
from stylestudio.files.v1 import files_pb2, files_pb2_grpc
from stylestudio.generation.v1 import generation_pb2, generation_pb2_grpc
from stylestudio_client import ServiceIdentity, connect, error_details
from stylestudio_client import channel as client_channel
from tests.harness import Platform

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "clients" / "python" / "examples" / "start_generation.py"
VERSION = (REPO_ROOT / "protos" / "VERSION").read_text().strip()
# What the wheel may require: gRPC, protobuf and Google's common protos, the JWT and crypto
# libraries, and OpenTelemetry's API as an extra; never the platform's own dependencies.
ALLOWED_REQUIREMENTS = {"grpcio", "protobuf", "googleapis-common-protos", "pyjwt", "opentelemetry-api"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        ["make", "--no-print-directory", "dist", f"DIST={dist}"], cwd=REPO_ROOT, check=True, timeout=300
    )
    return dist / f"stylestudio_client-{VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def client_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a fresh virtualenv holding only the wheel and what it requires (from PyPI)."""
    venv = tmp_path_factory.mktemp("client-venv")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"fresh virtualenv with the client wheel in {time.monotonic() - started:.1f} s")
    yield python


def test_make_dist_builds_a_wheel_of_the_stubs_and_the_helper_versioned_with_the_protos(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"stylestudio_client-{VERSION}.dist-info/METADATA").decode()
    assert "stylestudio/generation/v1/generation_pb2_grpc.py" in names
    assert "stylestudio/common/v1/error_pb2.pyi" in names
    assert "stylestudio_client/channel.py" in names
    assert {"stylestudio/py.typed", "stylestudio_client/py.typed"} <= set(names)
    assert not [name for name in names if name.startswith(("kit/", "services/", "gateway/"))]
    assert f"Version: {VERSION}" in metadata
    required = {
        line.split(":", 1)[1].strip().split(";")[0].split("[")[0].split("<")[0].split(">")[0].lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert required <= ALLOWED_REQUIREMENTS, required
    assert {"grpcio", "protobuf", "pyjwt"} <= required


def test_the_installed_package_needs_nothing_of_the_platform(client_python: Path) -> None:
    probe = (
        "import importlib.util, stylestudio_client, stylestudio.generation.v1.generation_pb2_grpc;"
        "print(stylestudio_client.__version__, [m for m in ('kit', 'services', 'sqlalchemy', 'redis')"
        " if importlib.util.find_spec(m)])"
    )
    result = subprocess.run(
        [client_python, "-I", "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == [VERSION, "[]"]


def test_a_calling_service_makes_its_key_and_credentials_the_kit_accepts(client_python: Path) -> None:
    """docs/clients.md's steps from the calling service's side: `generate-key` prints its identity
    and private key as env lines and the public key for the platform; `token` signs with them."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(client_python), "-m", "stylestudio_client", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=60)

    generated = run("generate-key", "--identity", "storefront")
    env = dict(line.split("=", 1) for line in generated.stdout.splitlines())
    assert env["STYLESTUDIO_SERVICE_IDENTITY"] == "storefront"
    public_keys = generated.stderr.split(": ", 1)[1]  # {"storefront": ["-----BEGIN PUBLIC KEY-----..."]}
    verifier = ServiceCredentials(
        generate_signing_identity("generation"), PublicKeySet.from_json(public_keys)
    )
    token = run("token", "--on-behalf-of", "user-7", env=env).stdout.strip()
    principal = verifier.verify(token)
    assert principal is not None and (principal.identity, principal.on_behalf_of) == ("storefront", "user-7")


def test_the_docs_show_the_example_as_it_is() -> None:
    doc = (REPO_ROOT / "docs" / "clients.md").read_text()
    shown = doc[doc.index("```python\nfrom __future__ import annotations") + len("```python\n") :]
    shown = shown[: shown.index("```")]
    example = EXAMPLE.read_text()
    assert example.endswith(shown) and "def main(" in shown


class Customer:
    """A user of the platform with tokens and a product photo, as the calling service knows them."""

    def __init__(self, platform: Platform, tokens: int) -> None:
        self.platform = platform
        self.user_id, token = platform.user_token()
        self.metadata = platform.bearer(token)
        self.tokens = tokens

    async def prepare(self) -> str:
        """Grants the tokens; the id of an uploaded product photo."""
        if self.tokens:
            billing = self.platform.stub("billing", billing_pb2_grpc.BillingServiceStub)
            await billing.GrantTokens(
                billing_pb2.GrantTokensRequest(
                    user_id=self.user_id, amount=self.tokens, reason="test", idempotency_key=str(uuid.uuid4())
                )
            )
        files = files_pb2_grpc.FilesServiceStub(self.platform.user_channel("files"))
        photo = io.BytesIO()
        Image.new("RGB", (240, 320), "navy").save(photo, format="PNG")

        async def parts() -> AsyncIterator[files_pb2.UploadFileRequest]:
            yield files_pb2.UploadFileRequest(
                metadata=files_pb2.UploadFileMetadata(
                    filename="shirt.png", content_type="image/png", category="product_image"
                )
            )
            yield files_pb2.UploadFileRequest(chunk=photo.getvalue())

        return str((await files.UploadFile(parts(), metadata=self.metadata)).id)


def run_example(
    python: Path, platform: Platform, user_id: str, file_id: str
) -> subprocess.CompletedProcess[str]:
    """The example, as the `operator` identity with the key the platform accepts for it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("STYLESTUDIO_", "PYTHON"))}
    env["STYLESTUDIO_SERVICE_IDENTITY"] = "operator"
    env["STYLESTUDIO_SERVICE_PRIVATE_KEY"] = platform.keyring.keys["operator"].private_pem()
    command = [
        str(python),
        str(EXAMPLE),
        *("--target", platform.addresses["generation"], "--user", user_id, "--file", file_id),
    ]
    return subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=180, check=False)


async def test_the_example_starts_a_generation_for_a_user_and_watches_it_to_completed(
    client_python: Path, platform: Platform
) -> None:
    customer = Customer(platform, tokens=10)
    file_id = await customer.prepare()
    result = run_example(client_python, platform, customer.user_id, file_id)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    generation_id = lines[0].split()[1]
    statuses = [line.split()[1] for line in lines if line.startswith(f"{generation_id} ")]
    # The watch starts with the generation as it is then (already COMPLETED if the worker was quick).
    assert statuses and statuses[-1] == "COMPLETED", result.stdout
    assert lines[-1].startswith("results: ") and len(lines[-1].split()) > 1

    # The user's own view: their generation, paid from their tokens; the audit trail names both.
    generations = generation_pb2_grpc.GenerationServiceStub(platform.user_channel("generation"))
    seen = await generations.GetGeneration(
        generation_pb2.GetGenerationRequest(id=generation_id), metadata=customer.metadata
    )
    assert seen.token_cost > 0
    logged = platform.logs("generation")
    assert f"caller_service=operator on_behalf_of={customer.user_id}" in logged


async def test_the_example_reports_a_refusal_with_its_reason_and_details(
    client_python: Path, platform: Platform
) -> None:
    customer = Customer(platform, tokens=0)
    result = run_example(client_python, platform, customer.user_id, await customer.prepare())
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refused: FAILED_PRECONDITION INSUFFICIENT_TOKENS" in result.stderr
    assert "'available': '0'" in result.stderr


def test_the_kit_verifies_the_client_credential_for_itself_and_for_a_user() -> None:
    identity = ServiceIdentity.generate("operator")
    accepted = PublicKeySet.from_json(json.dumps({"operator": [identity.public_pem()]}))
    verifier = ServiceCredentials(generate_signing_identity("generation"), accepted)
    assert accepted.kids_of("operator") == {identity.key_id}
    itself = verifier.verify(identity.token())
    assert itself is not None and (itself.identity, itself.on_behalf_of) == ("operator", "")
    acting = verifier.verify(identity.token(on_behalf_of="user-1"))
    assert acting is not None and (acting.identity, acting.on_behalf_of) == ("operator", "user-1")


def test_the_package_keeps_the_kits_channel_options() -> None:
    """The package cannot import the kit: its copy of the platform's channel options stays equal."""
    assert dict(client_channel.CHANNEL_OPTIONS) == dict(kit_clients.CHANNEL_OPTIONS)


async def test_calls_carry_the_callers_trace_context_and_a_deadline(platform: Platform) -> None:
    user_id, _ = platform.user_token()
    identity = ServiceIdentity.from_pem("operator", platform.keyring.keys["operator"].private_pem())
    trace_id, span_id = uuid.uuid4().int >> 1, uuid.uuid4().int >> 65
    parent = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    async with connect(platform.addresses["generation"], identity) as channel:
        generations = generation_pb2_grpc.GenerationServiceStub(channel.for_user(user_id))
        with trace.use_span(NonRecordingSpan(parent)):
            await generations.ListGenerations(generation_pb2.ListGenerationsRequest())
        assert await _server_span(platform, format(trace_id, "032x"), "ListGenerations")

    # A server that takes its time: only the call's deadline ends it (a 1 µs deadline against
    # the platform could lose the race to a fast answer: gRPC rounds deadlines up to the ms).
    remaining: list[float | None] = []

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining.append(context.time_remaining())
        await asyncio.sleep(10)
        return b""

    service = generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name
    handler = grpc.unary_unary_rpc_method_handler(slow)
    server = grpc.aio.server(
        handlers=[grpc.method_handlers_generic_handler(service, {"ListStyles": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with connect(f"127.0.0.1:{port}", identity, deadline_seconds=0.5) as hurried:
            stub = generation_pb2_grpc.GenerationServiceStub(hurried)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.ListStyles(generation_pb2.ListStylesRequest())
    finally:
        await server.stop(None)
    assert remaining and remaining[0] is not None and 0 < remaining[0] <= 0.5  # the deadline crossed
    assert error_details(late.value).code == grpc.StatusCode.DEADLINE_EXCEEDED


async def _server_span(platform: Platform, trace_id: str, method: str) -> bool:
    for _ in range(50):  # the span file is written when the span ends, just after the answer
        for line in platform.trace_file.read_text().splitlines():
            span = json.loads(line)
            if span["trace_id"] == trace_id and span["kind"] == "SERVER" and span["name"].endswith(method):
                return True
        await asyncio.sleep(0.1)
    return False
