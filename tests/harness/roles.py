"""What PostgreSQL holds for a service's role: its stored password, checked against a candidate."""

from __future__ import annotations

import base64
import hashlib
import hmac

import psycopg
from sqlalchemy.engine import make_url

from kit.bootstrap import role_name


def libpq_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def stored_verifier(admin_url: str, service: str) -> str:
    """The role's password as PostgreSQL keeps it (pg_authid, readable by a superuser)."""
    with psycopg.connect(libpq_dsn(admin_url)) as connection:
        row = connection.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role_name(service)]
        ).fetchone()
    assert row is not None and row[0], f"{role_name(service)} has no password"
    return str(row[0])


def password_matches(verifier: str, password: str) -> bool:
    """Whether ``password`` is the one stored as a SCRAM-SHA-256 verifier (RFC 5803).

    The test server trusts local connections, so logging in would prove nothing.
    """
    scheme, rest = verifier.split("$", 1)
    assert scheme == "SCRAM-SHA-256", "the server stores SCRAM verifiers (password_encryption)"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, _ = keys.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))
