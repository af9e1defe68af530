"""A local server that speaks Cloudinary's upload API and signed delivery URLs, for tests.

It implements, independently of the SDK, what Cloudinary checks: the API key, the
request signature (sorted ``key=value`` pairs joined by ``&``, the API secret appended,
SHA-1 or SHA-256 hex; values with ``&`` escaped as in signature version 2), the
timestamp's freshness, and the ``s--<signature>--`` component of delivery URLs of
``authenticated`` assets (URL-safe base64 of SHA-1 over the public id and the secret, 8 characters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness.platform import free_port

NOT_SIGNED = {"file", "api_key", "resource_type", "cloud_name", "signature"}
# A delivery URL's transformation component: "c_limit,h_256,w_256" (only c_limit is applied here).
TRANSFORMATION = re.compile(r"[a-z]{1,2}_[^/,]+(,[a-z]{1,2}_[^/,]+)*")
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass
class Asset:
    content: bytes
    version: int
    format: str


@dataclass
class FakeCloudinary:
    cloud_name: str = "style-studio-test"
    api_key: str = "123456789012345"
    api_secret: str = "test-api-secret-for-signatures"
    # Token-based authentication's key (hex), for expiring delivery URLs.
    auth_token_key: str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    assets: dict[tuple[str, str], Asset] = field(default_factory=dict)
    rejected_signatures: int = 0
    destroyed: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def expected_signature(self, params: dict[str, str], algorithm: str) -> str:
        pairs = [f"{key}={value}".replace("&", "%26") for key, value in sorted(params.items()) if value]
        return hashlib.new(algorithm, ("&".join(pairs) + self.api_secret).encode()).hexdigest()

    def valid_token(self, token: str, path: str) -> bool:
        """Token-based authentication: ``exp=<unix s>~hmac=<hex>``, the HMAC-SHA256 under the hex
        key over ``exp=<unix s>~url=<path, reserved characters percent-encoded in lower case>``."""
        fields = dict(part.split("=", 1) for part in token.split("~") if "=" in part)
        url = re.sub(r"""[ "#%&'/:;<=>?@\[\\\]^`{|}~]""", lambda m: f"%{ord(m.group()):02x}", path)
        message = f"exp={fields.get('exp', '')}~url={url}".encode()
        expected = hmac.new(bytes.fromhex(self.auth_token_key), message, hashlib.sha256).hexdigest()
        fresh = fields.get("exp", "").isdigit() and int(fields["exp"]) > time.time()
        return bool(fresh) and hmac.compare_digest(expected, fields.get("hmac", ""))

    def _check_signed(self, form: dict[str, str]) -> JSONResponse | None:
        if form.get("api_key") != self.api_key:
            return _error(401, "Invalid api_key")
        signature = form.get("signature", "")
        algorithm = "sha256" if len(signature) == 64 else "sha1"
        signed = {key: value for key, value in form.items() if key not in NOT_SIGNED}
        if signature != self.expected_signature(signed, algorithm):
            self.rejected_signatures += 1
            return _error(401, "Invalid Signature")
        if abs(time.time() - int(form.get("timestamp", "0"))) > 3600:
            return _error(400, "Stale request")
        return None

    async def upload(self, request: Request) -> Response:
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        if (refused := self._check_signed(fields)) is not None:
            return refused
        upload = form["file"]
        content = await upload.read()  # type: ignore[union-attr]
        with Image.open(io.BytesIO(content)) as image:
            fmt, (width, height) = str(image.format).lower().replace("jpeg", "jpg"), image.size
        public_id, kind = fields["public_id"], fields.get("type", "upload")
        version = int(time.time())
        self.assets[(kind, public_id)] = Asset(content, version, fmt)
        delivery = f"{self.url}/{self.cloud_name}/image/{kind}/v{version}/{public_id}.{fmt}"
        return JSONResponse(
            {
                "public_id": public_id,
                "version": version,
                "signature": hashlib.sha1(content).hexdigest(),
                "width": width,
                "height": height,
                "format": fmt,
                "resource_type": "image",
                "type": kind,
                "bytes": len(content),
                "url": delivery,
                "secure_url": delivery,
            }
        )

    async def destroy(self, request: Request) -> Response:
        fields = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
        if (refused := self._check_signed(fields)) is not None:
            return refused
        found = self.assets.pop((fields.get("type", "upload"), fields["public_id"]), None)
        if found is not None:
            self.destroyed.append(fields["public_id"])
        return JSONResponse({"result": "ok" if found else "not found"})

    async def deliver(self, request: Request) -> Response:
        kind, rest = request.path_params["kind"], request.path_params["rest"]
        parts = rest.split("/")
        signature = ""
        if parts and parts[0].startswith("s--") and parts[0].endswith("--"):
            signature, parts = parts[0][3:-2], parts[1:]
        transformation = ""
        if parts and TRANSFORMATION.fullmatch(parts[0]):
            transformation, parts = parts[0], parts[1:]
        if parts and parts[0].startswith("v") and parts[0][1:].isdigit():
            parts = parts[1:]
        source = "/".join(parts)
        token = request.query_params.get("__cld_token__")
        if kind == "authenticated" and token is not None:
            if not self.valid_token(token, request.url.path):
                self.rejected_signatures += 1
                return Response(status_code=401)
        elif kind == "authenticated":
            signed = f"{transformation}/{source}" if transformation else source
            digest = hashlib.sha1((signed + self.api_secret).encode()).digest()
            if signature != base64.urlsafe_b64encode(digest)[:8].decode():
                self.rejected_signatures += 1
                return Response(status_code=401)
        public_id, _, ext = source.rpartition(".") if "." in source.rsplit("/", 1)[-1] else (source, "", "")
        asset = self.assets.get((kind, public_id))
        if asset is None:
            return Response(status_code=404)
        content = _transformed(asset, transformation) if transformation else asset.content
        return Response(content, media_type=CONTENT_TYPES[ext or asset.format])

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1_1/{cloud}/image/upload", self.upload, methods=["POST"]),
                Route("/v1_1/{cloud}/image/destroy", self.destroy, methods=["POST"]),
                Route("/{cloud}/image/{kind}/{rest:path}", self.deliver, methods=["GET"]),
            ]
        )


class RunningFakeCloudinary:
    """The fake server on its own thread (the Cloudinary SDK calls it from worker threads)."""

    def __init__(self) -> None:
        self.fake = FakeCloudinary()
        config = uvicorn.Config(self.fake.app(), host="127.0.0.1", port=self.fake.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> FakeCloudinary:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("fake Cloudinary did not start")
            time.sleep(0.02)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _transformed(asset: Asset, transformation: str) -> bytes:
    """The asset scaled down as ``c_limit,w_..,h_..`` asks (Cloudinary's "limit" crop)."""
    options = dict(part.split("_", 1) for part in transformation.split(","))
    assert options.get("c") == "limit", transformation
    with Image.open(io.BytesIO(asset.content)) as image:
        image.thumbnail((int(options["w"]), int(options["h"])))
        out = io.BytesIO()
        image.save(out, format=str(Image.registered_extensions()[f".{asset.format}"]))
        return out.getvalue()
