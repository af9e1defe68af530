"""Signed links: a file's bytes for whoever holds the link, until it expires.

A link is the gateway route ``/v1/files/{id}/content:signed`` with ``expires`` (Unix seconds),
``kid`` (the key's id) and ``sig``: URL-safe base64, unpadded, of HMAC-SHA256 under that key
over ``"<id>:<rendition>:<expires>:<kid>"`` (``rendition`` is ``thumbnail`` or empty, and is a
query parameter of thumbnail links). Only the files service holds the keys. Rotating the key
keeps the previous one by its id, so links signed before keep working until they expire.

New links expire on a grid of ``LINK_STEP_SECONDS``, so a client asking twice within a step gets
the same URL, and a browser or CDN cache can answer the second time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from kit.errors import Forbidden

THUMBNAIL = "thumbnail"
RENDITIONS = ("", THUMBNAIL)
LINK_STEP_SECONDS = 300


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: datetime


def link_signature(key: bytes, file_id: str, rendition: str, expires: int, kid: str) -> str:
    message = f"{file_id}:{rendition}:{expires}:{kid}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class LinkSigner:
    """Signs links with the current key; accepts links of any key it still knows."""

    def __init__(self, keys: Mapping[str, bytes], current_kid: str, ttl_seconds: int, base_url: str) -> None:
        if current_kid not in keys:
            raise ValueError("the current link-signing key is not among the keys")
        self._keys = dict(keys)
        self._kid = current_kid
        self._ttl = ttl_seconds
        self._base = base_url.rstrip("/")

    def expiry(self, now: float | None = None) -> int:
        """When a link made now expires: within one step before ``now + ttl``, never earlier
        than one step from now."""
        latest = int(now if now is not None else time.time()) + self._ttl
        step = min(LINK_STEP_SECONDS, max(self._ttl // 4, 1))
        return latest - latest % step

    def link(self, file_id: str, rendition: str = "", now: float | None = None) -> SignedLink:
        expires = self.expiry(now)
        sig = link_signature(self._keys[self._kid], file_id, rendition, expires, self._kid)
        query = {"rendition": rendition} if rendition else {}
        query |= {"expires": str(expires), "kid": self._kid, "sig": sig}
        url = f"{self._base}/v1/files/{file_id}/content:signed?{urlencode(query)}"
        return SignedLink(url, datetime.fromtimestamp(expires, UTC))

    def verify(self, file_id: str, rendition: str, expires: int, kid: str, sig: str) -> int:
        """The seconds the link has left; FORBIDDEN if it was altered, signed by an unknown key
        or has expired (one answer for all: a prober learns nothing)."""
        key = self._keys.get(kid)
        remaining = expires - int(time.time())
        valid = (
            key is not None
            and rendition in RENDITIONS
            and _is_file_id(file_id)
            and hmac.compare_digest(link_signature(key, file_id, rendition, expires, kid), sig)
        )
        if not valid or remaining <= 0:
            raise refused_link()
        return remaining


def refused_link() -> Forbidden:
    return Forbidden("This link is not valid: it was altered, has expired, or the file was deleted")


def _is_file_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
