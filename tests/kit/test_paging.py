"""Page tokens (kit.paging): what one encodes decodes back exactly; anything else is one 400.

The lists that use them are tested per service (tests/*/: a list walked page by page, a forged
token refused) and all together in tests/platform/test_malformed_input.py.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kit import paging
from kit.errors import Reason, ValidationError
from kit.paging import Cursor, InvalidPageToken

# Aware times anywhere a datetime can hold them in UTC, in any offset a time zone can have.
OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS | st.just(UTC)
)
IDS = st.uuids()
SEQUENCES = st.integers(min_value=0, max_value=paging.MAX_SEQUENCE)


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def _assert_refused(decode: Callable[[Any], object], token: object) -> None:
    with pytest.raises(InvalidPageToken) as refused:
        decode(token)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.reason == Reason.VALIDATION_ERROR
    assert refused.value.details == {"field": "pageToken"}


@given(TIMES, IDS)
@example(datetime(1, 1, 1, tzinfo=UTC), uuid.UUID(int=0))
@example(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), uuid.UUID(int=2**128 - 1))
@example(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), uuid.uuid4())
def test_a_cursor_comes_back_as_the_same_instant_and_id(created_at: datetime, item_id: uuid.UUID) -> None:
    token = paging.encode_cursor(created_at, item_id)
    cursor = paging.decode_cursor(token)
    assert cursor == Cursor(created_at, item_id)
    assert cursor is not None and cursor.created_at.utcoffset() == timedelta(0)
    assert len(token) <= paging.MAX_TOKEN_CHARS
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(SEQUENCES)
@example(0)
@example(paging.MAX_SEQUENCE)
def test_a_sequence_number_comes_back_exactly(number: int) -> None:
    token = paging.encode_sequence(number)
    assert paging.decode_sequence(token) == number
    assert len(token) <= paging.MAX_TOKEN_CHARS and "=" not in token


@given(TIMES, IDS)
def test_cursor_tokens_keep_their_list_order(created_at: datetime, item_id: uuid.UUID) -> None:
    later = paging.decode_cursor(paging.encode_cursor(created_at + timedelta(microseconds=1), item_id))
    earlier = paging.decode_cursor(paging.encode_cursor(created_at, item_id))
    assert earlier is not None and later is not None and earlier < later


def test_the_first_page_has_no_token() -> None:
    assert paging.decode_cursor("") is None
    assert paging.decode_sequence("") is None


def test_a_padded_token_is_the_same_token() -> None:
    padded = base64.urlsafe_b64encode(b"12").decode()
    assert padded.endswith("=")
    assert paging.decode_sequence(padded) == 12 == paging.decode_sequence(padded.rstrip("="))


def test_a_token_of_one_kind_is_refused_by_the_other() -> None:
    _assert_refused(paging.decode_sequence, paging.encode_cursor(datetime.now(UTC), uuid.uuid4()))
    _assert_refused(paging.decode_cursor, paging.encode_sequence(42))


NOW_MICROS = b"1767225600000000"
ID_HEX = uuid.uuid4().hex.encode()
FORGED_CURSORS = [
    "not base64!",
    "YWJj+/8",  # standard base64's alphabet, not base64url's
    "MTIz\n",
    "\x00" * 8,
    _token(NOW_MICROS + b"." + ID_HEX) + "\x00",
    _token(NOW_MICROS + b"." + ID_HEX)[:-1] + "\x00",
    "A" * (paging.MAX_TOKEN_CHARS + 1),
    _token(b"9" * 5000),
    "A",  # one character: no base64 length
    _token(b"\xff\xfe"),
    _token(b"\x00"),
    _token(NOW_MICROS + b"\x00." + ID_HEX),
    # the formats of the earlier per-service tokens: a restarted list, not a 5xx
    _token(b"2026-01-01T00:00:00+00:00|" + str(uuid.uuid4()).encode()),
    _token(b'{"t": "2026-01-01T00:00:00+00:00", "i": "' + str(uuid.uuid4()).encode() + b'"}'),
    _token(b'{"t": "2024-01-01T00:00:00+00:00", "i": 5}'),  # a number for an id
    _token(b"[" * 2000 + b"]" * 2000),
    # out of range: past year 9999, before year 1, more digits than any datetime
    _token(b"253402300800000000." + ID_HEX),
    _token(b"-62135596800000001." + ID_HEX),
    _token(b"9" * 40 + b"." + ID_HEX),
    # not an id: too short, upper case, hyphenated, braced, a URN
    _token(NOW_MICROS + b"." + ID_HEX[:-1]),
    _token(NOW_MICROS + b"." + ID_HEX.upper()),
    _token(NOW_MICROS + b"." + str(uuid.UUID(ID_HEX.decode())).encode()),
    _token(NOW_MICROS + b".{" + ID_HEX + b"}"),
    _token(NOW_MICROS + b".urn:uuid:" + ID_HEX),
    # digits of other scripts, which str.isdigit() and int() take
    _token("\u0661\u0662\u0663.".encode() + ID_HEX),
    _token(NOW_MICROS + b" ." + ID_HEX),
    _token(b"+" + NOW_MICROS + b"." + ID_HEX),
    _token(NOW_MICROS + b"." + ID_HEX + b"\n"),
]
FORGED_SEQUENCES = [
    "not base64!",
    "A" * (paging.MAX_TOKEN_CHARS + 1),
    _token(b"-1"),
    _token(b"+1"),
    _token(b" 1"),
    _token(b"1\n"),
    _token(b"1.0"),
    _token(b"1e3"),
    _token(b"0x10"),
    _token(str(paging.MAX_SEQUENCE + 1).encode()),
    _token(b"99999999999999999999"),
    _token(b"9" * 5000),
    _token("\u00b2".encode()),  # superscript two: str.isdigit() says yes, int() says no
    _token("\u0661".encode()),  # Arabic-Indic one: int() says 1
    _token(b"1\x00"),
    _token(b"\xff\xfe"),
    "==",  # padding alone: no digits
]


@pytest.mark.parametrize("token", FORGED_CURSORS)
def test_a_forged_cursor_is_refused_naming_the_field(token: str) -> None:
    _assert_refused(paging.decode_cursor, token)


@pytest.mark.parametrize("token", FORGED_SEQUENCES)
def test_a_forged_sequence_is_refused_naming_the_field(token: str) -> None:
    _assert_refused(paging.decode_sequence, token)


@pytest.mark.parametrize("token", [b"MTIz", None, 123, ["MTIz"]])
def test_a_token_of_another_type_is_refused(token: object) -> None:
    _assert_refused(paging.decode_cursor, token)
    _assert_refused(paging.decode_sequence, token)


def test_the_refusal_quotes_nothing_of_the_token() -> None:
    secret = _token(b"a secret someone pasted here")
    with pytest.raises(ValidationError) as refused:
        paging.decode_cursor(secret)
    assert secret not in str(refused.value) and "secret" not in str(refused.value)
    assert str(refused.value) == "pageToken is not a token this API returned"


def _a_value_or_one_refusal(decode: Callable[[str], Any], encode: Callable[[Any], str], token: str) -> None:
    """Decoding ``token`` is a refusal, or a value that encodes to a token decoding to it again."""
    try:
        value = decode(token)
    except InvalidPageToken:
        return
    assert value is None or decode(encode(value)) == value


def _encode_cursor(cursor: Cursor) -> str:
    return paging.encode_cursor(*cursor)


@given(st.text(max_size=300))
def test_any_text_is_a_value_or_one_refusal(token: str) -> None:
    _a_value_or_one_refusal(paging.decode_cursor, _encode_cursor, token)
    _a_value_or_one_refusal(paging.decode_sequence, paging.encode_sequence, token)


@given(st.binary(max_size=120))
def test_any_bytes_behind_base64_are_a_value_or_one_refusal(raw: bytes) -> None:
    _a_value_or_one_refusal(paging.decode_cursor, _encode_cursor, _token(raw))
    _a_value_or_one_refusal(paging.decode_sequence, paging.encode_sequence, _token(raw))


def test_encoding_refuses_what_no_list_holds() -> None:
    with pytest.raises(ValueError):
        paging.encode_cursor(datetime(2026, 1, 1), uuid.uuid4())  # no time zone
    with pytest.raises(ValueError):
        paging.encode_cursor(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), uuid.uuid4())
    for number in (-1, paging.MAX_SEQUENCE + 1):
        with pytest.raises(ValueError):
            paging.encode_sequence(number)


# --- page sizes and pages ------------------------------------------------------------------------

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@given(INT32)
@example(0)
@example(-1)
@example(1)
@example(paging.MAX_PAGE_SIZE)
@example(paging.MAX_PAGE_SIZE + 1)
def test_a_page_size_is_the_contracts_or_one_refusal(requested: int) -> None:
    """API.md: default 20, at most 100. Unset is the default, more is the most, negative is a 400."""
    if requested < 0:
        with pytest.raises(ValidationError) as refused:
            paging.page_size(requested)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details == {"field": "pageSize"}
        assert str(refused.value) == "pageSize must not be negative"
        return
    size = paging.page_size(requested)
    assert 1 <= size <= paging.MAX_PAGE_SIZE == 100
    assert size == (20 if requested == 0 else min(requested, 100))


@dataclass(frozen=True)
class Item:
    created_at: datetime
    id: uuid.UUID


# Few distinct times, so items share a created_at and their id breaks the tie.
FEW_TIMES = st.sampled_from([datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(3)])
ITEMS = st.lists(st.builds(Item, FEW_TIMES, st.uuids()), max_size=40, unique_by=lambda item: item.id).map(
    lambda items: sorted(items, key=lambda item: (item.created_at, item.id), reverse=True)
)


def _fetch(items: list[Item], after: Cursor | None, limit: int) -> list[Item]:
    """A store's keyset query: the items after the cursor, newest first, at most ``limit``."""
    return [item for item in items if after is None or (item.created_at, item.id) < after][:limit]


@given(ITEMS, st.integers(min_value=1, max_value=12))
def test_walking_the_pages_shows_every_item_once_in_order(items: list[Item], size: int) -> None:
    shown: list[Item] = []
    pages, token = 0, ""
    while True:
        page = paging.page_of(_fetch(items, paging.decode_cursor(token), size + 1), size, paging.cursor_of)
        pages += 1
        assert len(page.items) <= size
        shown += page.items
        token = page.next_page_token
        if token == "":
            break
        assert page.items, "a page with a next page shows something"
    assert shown == items
    assert pages == max(1, -(-len(items) // size))  # no empty last page after a full one


@given(st.lists(SEQUENCES, max_size=30, unique=True), st.integers(min_value=1, max_value=10))
def test_a_sequence_list_pages_the_same_way(numbers: list[int], size: int) -> None:
    numbers.sort(reverse=True)
    shown: list[int] = []
    before = None
    while True:
        fetched = [n for n in numbers if before is None or n < before][: size + 1]
        page = paging.page_of(fetched, size, paging.encode_sequence)
        shown += page.items
        if not page.next_page_token:
            break
        before = paging.decode_sequence(page.next_page_token)
    assert shown == numbers


def test_the_extra_row_is_not_shown_and_names_nothing() -> None:
    rows = ["a", "b", "c"]
    assert paging.page_of(rows, 2, str.upper) == (["a", "b"], "B")
    assert paging.page_of(rows, 3, str.upper) == (rows, "")
    assert paging.page_of([], 20, str.upper) == ([], "")
    with pytest.raises(ValueError):
        paging.page_of(rows, 0, str.upper)
