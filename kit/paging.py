"""Keyset page tokens: where a list's previous page ended, as an opaque string.

Every list of the platform pages by keyset, not by offset: a page is "the next ``size``
items after the last one you saw", so a row inserted or deleted meanwhile neither repeats
nor skips an item. The page token names that last item: its ``(created_at, id)`` for a
list ordered newest first on those columns (``Cursor``), or its number for a list ordered
on an integer sequence (billing's transfers). Every service encodes and decodes it here,
so every list refuses the same things the same way.

A token is opaque to clients (API.md): base64url, without padding, of the cursor's plain
text. Decoding trusts nothing of it. Whatever this module did not make (not base64url, too
long, not UTF-8, a timestamp outside what a datetime holds, an id that is not a UUID, a
negative or oversized number) is one ``InvalidPageToken``: INVALID_ARGUMENT naming the
field ``pageToken``, as the kit's request checks name a field by its JSON path.

The format may change from one release to the next: a token from before is then refused
like any other, and the client starts the list again (docs/kit.md, "Page tokens").
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from kit.errors import ValidationError

FIELD = "pageToken"
# Longer than any token made here (a cursor's is about 70 characters): a longer one is
# refused before any decoding, so a megabyte of "token" costs nothing.
MAX_TOKEN_CHARS = 128
# The largest number a sequence token holds: PostgreSQL's bigint.
MAX_SEQUENCE = 2**63 - 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
# What a datetime holds, in microseconds from the epoch (years 1 to 9999, UTC).
_MIN_MICROS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _ONE_MICROSECOND
_MAX_MICROS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _ONE_MICROSECOND
# The alphabet of base64url (a client's trailing "=" padding is taken off first).
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# A cursor's text: microseconds since the epoch, a dot, the id's 32 lower-case hex digits.
# ASCII digits only: str.isdigit() and int() take other scripts' digits too.
_CURSOR = re.compile(r"(-?[0-9]{1,18})\.([0-9a-f]{32})")
_SEQUENCE = re.compile(r"[0-9]{1,19}")


class Cursor(NamedTuple):
    """Where a page ended on a list ordered newest first by ``(created_at, id)``. A tuple, so
    a store can compare it whole: ``sa.tuple_(t.c.created_at, t.c.id) < sa.tuple_(*after)``."""

    created_at: datetime
    id: uuid.UUID


class InvalidPageToken(ValidationError):
    """A page token this API did not give out (or gave out under an earlier format)."""

    def __init__(self) -> None:
        super().__init__(f"{FIELD} is not a token this API returned", field=FIELD)


def encode_cursor(created_at: datetime, item_id: uuid.UUID) -> str:
    """The token of a page that ended at the item ``(created_at, item_id)``.

    ``created_at`` must carry its time zone (every ``created_at`` column is timestamptz); the
    token keeps the instant, so it decodes to the same moment in UTC."""
    if created_at.tzinfo is None:
        raise ValueError("a page cursor's time needs its time zone")
    micros = (created_at - _EPOCH) // _ONE_MICROSECOND
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise ValueError("a page cursor's time is outside what a datetime holds in UTC")
    return _encode(f"{micros}.{item_id.hex}")


def decode_cursor(token: str) -> Cursor | None:
    """The cursor a token names; None for "" (the first page); ``InvalidPageToken`` otherwise."""
    if token == "":  # the first page; not None, which is no token at all
        return None
    match = _CURSOR.fullmatch(_decode(token))
    if match is None:
        raise InvalidPageToken()
    micros = int(match[1])
    if not _MIN_MICROS <= micros <= _MAX_MICROS:
        raise InvalidPageToken()
    return Cursor(_EPOCH + timedelta(microseconds=micros), uuid.UUID(hex=match[2]))


def encode_sequence(number: int) -> str:
    """The token of a page that ended at the item numbered ``number`` (0 to ``MAX_SEQUENCE``)."""
    if not 0 <= number <= MAX_SEQUENCE:
        raise ValueError("a page sequence number is a bigint of 0 or more")
    return _encode(str(number))


def decode_sequence(token: str) -> int | None:
    """The number a token names; None for "" (the first page); ``InvalidPageToken`` otherwise."""
    if token == "":  # the first page; not None, which is no token at all
        return None
    text = _decode(token)
    if _SEQUENCE.fullmatch(text) is None or int(text) > MAX_SEQUENCE:
        raise InvalidPageToken()
    return int(text)


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def _decode(token: str) -> str:
    """A token's text, or ``InvalidPageToken``: checked for length and alphabet before any
    decoding (the standard decoder skips characters outside the alphabet)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidPageToken()
    unpadded = token.rstrip("=")
    if _BASE64URL.fullmatch(unpadded) is None:
        raise InvalidPageToken()
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
        return raw.decode("ascii")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise InvalidPageToken() from None
