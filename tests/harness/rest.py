"""Accounts made through the gateway's REST API, for tests that go through it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import jsonschema

PASSWORD = "correct horse battery staple"


async def sign_up(
    gateway: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD, name: str = "Test User"
) -> dict[str, Any]:
    """A new account (a fresh email unless given), asserted signed up: the response's body
    (``user``, ``accessToken``, ``refreshToken`` ...)."""
    email = email or f"user.{uuid.uuid4().hex[:12]}@example.com"
    response = await gateway.post(
        "/v1/auth/signup", json={"email": email, "password": password, "name": name}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Validator:
    """A validator of ``schema`` from an OpenAPI document (often a ``$ref`` to one of its
    components), its references resolved in that document. Strict where the document is:
    message schemas allow no property they do not name."""
    return jsonschema.Draft4Validator({**schema, "components": document["components"]})
