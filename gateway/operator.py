"""/operator: the operator page (a trace's waterfall, the system analytics as charts), and the
admin check of the gateway's own admin routes.

The page is static, like /docs: an HTML shell, its script and style (gateway/static) and
Chart.js (vendored under gateway/static/vendor/chartjs, see VENDORED.md there), all served by
the gateway so it works with no internet. It holds no data: the operator signs in (or pastes
an access token) and the page calls the admin routes with it, GET /v1/analytics/system and
GET /v1/admin/traces/{id}. Its Content-Security-Policy lets it load and call nothing but
the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from gateway.descriptors import ApiDescriptors, ApiMethod
from gateway.errors import forbidden, from_rpc_error, unauthenticated
from gateway.exchange import Headers
from kit.auth import Caller, CallerKind
from kit.tokens import API_KEY_PREFIX

# (content type, bytes, extra headers) by URL path.
Asset = tuple[bytes, bytes, Headers]

PAGE_PATH = "/operator"
_STATIC_FILES = {
    "operator.js": b"text/javascript",
    "operator.css": b"text/css",
    "vendor/chartjs/chart.umd.min.js": b"text/javascript",
    "vendor/chartjs/LICENSE.md": b"text/plain; charset=utf-8",
}
# Scripts, styles, images and calls from the gateway only; no inline script, no framing.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS: Headers = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

GET_ME = "stylestudio.users.v1.UsersService.GetMe"


def operator_assets() -> dict[str, Asset]:
    """URL path -> (content type, bytes, headers), read once at start-up."""
    from gateway.docs import STATIC

    html = (STATIC / "operator.html").read_bytes()
    assets: dict[str, Asset] = {PAGE_PATH: (b"text/html; charset=utf-8", html, _PAGE_HEADERS)}
    for name, content_type in _STATIC_FILES.items():
        assets[f"{PAGE_PATH}/{name}"] = (content_type, (STATIC / name).read_bytes(), _PAGE_HEADERS[1:])
    return assets


class AdminCheck:
    """Refuses a caller who is not an admin, for the routes the gateway serves itself.

    The gateway verifies no token (docs/gateway.md): it asks the users service who the caller
    is (GetMe, with the caller's own credentials, so a bad or revoked token is the users
    service's 401) and applies the kit's rule to the answer (``kit.auth.Caller.is_admin``:
    the admin role, and never through an API key).
    """

    def __init__(self, descriptors: ApiDescriptors, deadline: float, retry_after: int) -> None:
        self.method: ApiMethod | None = descriptors.find_method(GET_ME)
        self._deadline = deadline
        self._retry_after = retry_after
        self._call: Any = None

    @property
    def available(self) -> bool:
        return self.method is not None

    def bind(self, call: Any) -> None:
        self._call = call

    async def require_admin(self, authorization: str | None, metadata: Sequence[tuple[str, str]]) -> None:
        """``metadata`` carries the caller's ``authorization`` (the gateway checked its form)."""
        assert self.method is not None
        if authorization is None:
            raise unauthenticated("Missing Authorization header")
        request = self.method.request_class()
        try:
            response = await self._call(
                request.SerializeToString(), metadata=metadata, timeout=self._deadline
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error, self._retry_after, "users") from error
        token = authorization.split(None, 1)[-1]
        caller = Caller(
            kind=CallerKind.USER,
            subject=response.id,
            role=response.role,
            api_key_id="api key" if token.startswith(API_KEY_PREFIX) else "",
        )
        if caller.is_api_key:
            raise forbidden("API keys cannot be used for admin routes; sign in and use an access token")
        if not caller.is_admin:
            raise forbidden("Admins only")
