"""Migration users_0003: emails stored before NFKC and email-validator are rewritten to the form
sign-in now looks them up in; collisions and plain addresses are left alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

from kit import migrations
from services.users import accounts
from tests.harness import own_database
from tests.users.conftest import full_width


@pytest.fixture(scope="module")
def users_at_0002(infrastructure: object) -> Iterator[str]:
    with own_database(infrastructure, ("users",), migrate=False) as database:
        url = database.service_urls["users"]
        migrations.upgrade("users", url, "users_0002")
        yield url


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))


def test_stored_emails_are_rewritten_to_the_form_sign_in_looks_up(users_at_0002: str) -> None:
    # What sign-up stored before (trimmed, NFC, lower case), in the forms NFKC or the
    # validator change, and two that must not change.
    stored = {
        "wide": full_width("wide") + "@example.com",
        "ligature": "\ufb01ona@example.com",
        "punycode": "info@xn--bcher-kva.de",
        "legacy": "ada..b@example.com",  # refused by the validator, still looked up as it is
        "plain": "plain@example.com",
        "unicode": "zoë@example.com",
        # Its rewrite would take the address of the account below: both are left as they are.
        "collides": full_width("taken") + "@example.com",
        "taken": "taken@example.com",
    }
    ids = {name: uuid.uuid4() for name in stored}
    with _connect(users_at_0002) as connection:
        for name, email in stored.items():
            connection.execute(
                "INSERT INTO users.users (id, email, name) VALUES (%s, %s, %s)", (ids[name], email, name)
            )

    migrations.upgrade("users", users_at_0002)

    with _connect(users_at_0002) as connection:
        rows: dict[uuid.UUID, str] = dict(connection.execute("SELECT id, email FROM users.users").fetchall())
    after = {name: rows[ids[name]] for name in stored}
    assert after == {
        "wide": "wide@example.com",
        "ligature": "fiona@example.com",
        "punycode": "info@bücher.de",
        "legacy": "ada..b@example.com",
        "plain": "plain@example.com",
        "unicode": "zoë@example.com",
        "collides": stored["collides"],
        "taken": "taken@example.com",
    }
    # Each rewritten account is found by what its owner types at sign-in.
    for name in ("wide", "ligature", "punycode", "legacy", "plain", "unicode"):
        assert accounts.email_for_lookup(stored[name].upper()) == after[name]
