"""One rule for every create that takes an ``Idempotency-Key`` (API.md, Conventions).

The same key from the same user with the same request returns the first result and does
nothing twice; the same key with a different request is CONFLICT (HTTP 409). "The same
request" is decided by a fingerprint: a SHA-256 over the request message's deterministic
serialisation, plus whatever else the request carried outside the message (an upload's
bytes). A service records the fingerprint beside the key, or rebuilds it from the row it
created when the row holds every field of the request.

Keys a service derives from a client's key (one per item of a batch) live in their own
namespace (``item_key``), so no client key can ever name a derived one.
"""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message

from kit.errors import Conflict


class IdempotencyKeyReused(Conflict):
    """The Idempotency-Key was first used with a different request."""

    def __init__(self, key: str) -> None:
        # The key itself is not echoed: the client has it, and a derived key is not the client's.
        super().__init__("This Idempotency-Key was used with a different request")
        self.key = key


def request_fingerprint(request: Message, *parts: bytes | str) -> str:
    """The request's fingerprint: its fields, and ``parts`` (e.g. the digest of uploaded bytes)."""
    digest = hashlib.sha256()
    digest.update(request.DESCRIPTOR.full_name.encode())
    for part in (request.SerializeToString(deterministic=True), *parts):
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))  # length-prefixed: parts cannot run into each other
        digest.update(data)
    return digest.hexdigest()


def ensure_same_request(key: str, recorded: str | None, fingerprint: str) -> None:
    """Raises IdempotencyKeyReused unless the key's recorded fingerprint is this request's.

    A row recorded before fingerprints were kept (``None``) cannot prove it was the same
    request, so it is treated as a different one: 409 rather than a silent wrong answer.
    """
    if recorded != fingerprint:
        raise IdempotencyKeyReused(key)


def item_key(key: str, scope: str, index: int) -> str:
    """The key of item ``index`` of a request made with ``key`` (a batch's items).

    Stored beside clients' keys, it must never equal one: a client's key is printable
    ASCII (gRPC metadata cannot carry anything else), so the separator is a character no
    client key can contain.
    """
    return f"{scope}\x1f{index}\x1f{key}"
