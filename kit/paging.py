"""Keyset paging: how many items a page holds, and where the previous page ended, as a token.

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

A page's size is the contract's (API.md: "default 20, max 100") for every list, so it is
decided here too (``page_size``), and so is what a page of rows fetched one past that size
keeps and which token it gives for the next (``page_of``).
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Generic, NamedTuple, Protocol, TypeVar

from kit.errors import ValidationError

FIELD = "pageToken"
SIZE_FIELD = "pageSize"
# API.md: "Lists take pageSize (default 20, max 100)".
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
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

Row = TypeVar("Row")


class Cursor(NamedTuple):
    """Where a page ended on a list ordered newest first by ``(created_at, id)``. A tuple, so
    a store can compare it whole: ``sa.tuple_(t.c.created_at, t.c.id) < sa.tuple_(*after)``."""

    created_at: datetime
    id: uuid.UUID


class Keyed(Protocol):
    """An item of a list ordered by ``(created_at, id)``: a row, a record, a dataclass."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


class InvalidPageToken(ValidationError):
    """A page token this API did not give out (or gave out under an earlier format)."""

    def __init__(self) -> None:
        super().__init__(f"{FIELD} is not a token this API returned", field=FIELD)


class Page(NamedTuple, Generic[Row]):
    """The items a page shows, and the token of the next page ("" on the last one, API.md)."""

    items: list[Row]
    next_page_token: str


def page_size(requested: int) -> int:
    """How many items a page holds when the client asked for ``requested`` (``pageSize``).

    0 (unset, proto3's default) is ``DEFAULT_PAGE_SIZE``. More than ``MAX_PAGE_SIZE`` is
    ``MAX_PAGE_SIZE``: the contract names the most a page holds, so a client asking for more
    gets the most and pages on, as with any other size. A negative size asks for nothing a
    page can be, so it is refused, naming ``pageSize`` (the JSON name, like ``pageToken``)."""
    if requested < 0:
        raise ValidationError(f"{SIZE_FIELD} must not be negative", field=SIZE_FIELD)
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page_of(rows: Sequence[Row], size: int, token_of: Callable[[Row], str]) -> Page[Row]:
    """The page of ``rows``, fetched with a limit of ``size + 1``, and the next page's token.

    The one row past ``size`` is how a list knows there is a next page without counting: it
    is not shown, and the token is ``token_of`` the last row shown (e.g. ``encode_cursor`` of
    its ``created_at`` and ``id``), since the next page starts after it. ``size`` or fewer
    rows are the last page: its token is ""."""
    if size < 1:
        raise ValueError("a page holds at least one item")
    if len(rows) <= size:
        return Page(list(rows), "")
    items = list(rows[:size])
    return Page(items, token_of(items[-1]))


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


def cursor_of(item: Keyed) -> str:
    """The token of a page that ended at ``item``: ``page_of``'s ``token_of`` for such lists."""
    return encode_cursor(item.created_at, item.id)


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
