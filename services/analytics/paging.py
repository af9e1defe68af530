"""Keyset paging of analytics' lists (usage records, audit events): newest first, the page token
naming the last entry's time and id. A token is opaque to clients; a forged one is a 400."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from kit.errors import ValidationError


@dataclass(frozen=True)
class Cursor:
    """Where a page ended (newest first): the last entry's time and id."""

    created_at: datetime
    id: uuid.UUID


def encode_page_token(created_at: datetime, entry_id: uuid.UUID) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "i": str(entry_id)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> Cursor | None:
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = Cursor(datetime.fromisoformat(raw["t"]), uuid.UUID(raw["i"]))
    # forged tokens: AttributeError from uuid.UUID(5), RecursionError from deeply nested JSON
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise ValidationError("page_token is not one this API returned", field="page_token") from error
    if cursor.created_at.tzinfo is None:
        raise ValidationError("page_token is not one this API returned", field="page_token")
    return cursor
