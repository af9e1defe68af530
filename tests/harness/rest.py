"""Accounts made through the gateway's REST API, for tests that go through it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

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
