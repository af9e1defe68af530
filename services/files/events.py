"""What the files service publishes (for analytics); it consumes nothing.

Events carry ids and facts only: never the file name, which can be personal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from kit.events import Outbox
from stylestudio.files.v1 import events_pb2

FILE_UPLOADED = "files.file_uploaded"
FILE_DELETED = "files.file_deleted"


async def file_uploaded(session: AsyncConnection, outbox: Outbox, file: Mapping[str, Any]) -> None:
    await outbox.add(
        session,
        FILE_UPLOADED,
        events_pb2.FileUploaded(
            user_id=file["user_id"],
            file_id=str(file["id"]),
            category=file["category"],
            content_type=file["content_type"],
            size=file["size"],
            width=file["width"],
            height=file["height"],
            generation_id=file.get("generation_id") or "",
        ),
        user_id=file["user_id"],
    )


async def file_deleted(session: AsyncConnection, outbox: Outbox, file: Mapping[str, Any]) -> None:
    await outbox.add(
        session,
        FILE_DELETED,
        events_pb2.FileDeleted(
            user_id=file["user_id"], file_id=str(file["id"]), category=file["category"], size=file["size"]
        ),
        user_id=file["user_id"],
    )
