"""/v1/users/me/stats with every service answering: totals from billing, files and generation."""

from __future__ import annotations

import uuid

import httpx

from tests.files.samples import image_bytes


async def test_stats_combine_billing_files_and_generation(gateway: httpx.AsyncClient) -> None:
    email = f"stats-{uuid.uuid4().hex[:8]}@example.com"
    signup = await gateway.post(
        "/v1/auth/signup", json={"email": email, "password": "long password 42", "name": "S"}
    )
    assert signup.status_code == 200, signup.text
    headers = {"Authorization": f"Bearer {signup.json()['accessToken']}"}
    content = image_bytes("PNG", (64, 48))
    upload = await gateway.post(
        "/v1/files",
        headers=headers,
        data={"category": "product_image"},
        files={"file": ("shirt.png", content, "image/png")},
    )
    assert upload.status_code == 200, upload.text
    stats = await gateway.get("/v1/users/me/stats", headers=headers)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body.get("missingSources", []) == []
    assert int(body["storageBytes"]) == int(upload.json()["size"])
    assert (body["totalGenerations"], int(body["tokensSpent"]), int(body["tokensPurchased"])) == (0, 0, 0)
    assert body["memberSince"] == signup.json()["user"]["createdAt"]
