"""The gateway tells the services who is behind a call: the client's address and user agent."""

from __future__ import annotations

import httpx
import psycopg
from sqlalchemy.engine import make_url

from tests.harness import Platform


async def test_the_usage_log_records_the_http_clients_address_and_user_agent(
    platform: Platform, gateway: httpx.AsyncClient
) -> None:
    _, token = platform.user_token()
    headers = {
        "Authorization": f"Bearer {token}",
        "User-Agent": "StyleStudioTest/1.0",
        # Not behind a trusted proxy: a client's own claim is not believed.
        "X-Forwarded-For": "203.0.113.9",
    }
    logged = await gateway.post("/v1/analytics/usage", headers=headers, json={"action": "page_view"})
    assert logged.status_code == 200, logged.text
    admin = make_url(platform.database.admin_url).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT host(ip_address), user_agent FROM analytics.usage_records WHERE id = %s",
            (logged.json()["id"],),
        ).fetchone()
    assert row == ("127.0.0.1", "StyleStudioTest/1.0")
