"""The files service's rows against the bytes on its local store, and no result of a generation
that did not complete.

The local store keeps a file at ``<data dir>/files/<key>`` (services/files/storage/local.py,
``FilesSettings.files_dir``); files on another back end (Cloudinary) are not walked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from bench.soak.invariants.generations import GenerationFacts
from bench.soak.invariants.violations import (
    FILE_WITHOUT_BYTES,
    FILE_WITHOUT_ROW,
    RESULT_OF_UNFINISHED_GENERATION,
    Violation,
)
from services.files.models import ACTIVE, files, upload_reservations
from services.files.storage.local import LocalDiskStorage
from services.generation.lifecycle import Status

LOCAL = LocalDiskStorage.name


async def stored_files(
    connection: AsyncConnection, files_dir: Path, generations: Sequence[GenerationFacts]
) -> list[Violation]:
    rows = (
        await connection.execute(
            sa.select(
                files.c.id,
                files.c.storage_backend,
                files.c.storage_key,
                files.c.status,
                files.c.purged_at,
                files.c.size,
                files.c.generation_id,
            )
        )
    ).all()
    # Bytes being written by an upload in flight have no row yet, and are not strays.
    in_flight = set(
        (
            await connection.execute(
                sa.select(upload_reservations.c.storage_key).where(
                    upload_reservations.c.storage_backend == LOCAL
                )
            )
        ).scalars()
    )
    on_disk = await asyncio.to_thread(_walk, files_dir)
    found: list[Violation] = []
    # A row keeps its bytes until the janitor purges them (a deleted file's wait for the janitor).
    kept = {row.storage_key for row in rows if row.storage_backend == LOCAL and row.purged_at is None}
    for key in sorted(set(on_disk) - kept - in_flight):
        found.append(Violation(FILE_WITHOUT_ROW, key, f"{on_disk[key]} bytes stored under no file's row"))
    for row in rows:
        if row.storage_backend != LOCAL or row.status != ACTIVE:
            continue
        size = on_disk.get(row.storage_key)
        if size is None:
            found.append(Violation(FILE_WITHOUT_BYTES, str(row.id), f"no bytes at {row.storage_key}"))
        elif size != row.size:
            found.append(
                Violation(FILE_WITHOUT_BYTES, str(row.id), f"{size} bytes stored, the row says {row.size}")
            )
    found += _results_of_unfinished(rows, generations)
    return found


def _results_of_unfinished(rows: Sequence[sa.Row], generations: Sequence[GenerationFacts]) -> list[Violation]:
    unfinished: Collection[str] = {g.id for g in generations if g.status in (Status.FAILED, Status.CANCELED)}
    status_of = {g.id: g.status.value for g in generations}
    return [
        Violation(
            RESULT_OF_UNFINISHED_GENERATION,
            str(row.id),
            f"an active result of generation {row.generation_id}, which is {status_of[row.generation_id]}",
        )
        for row in rows
        if row.status == ACTIVE and row.generation_id in unfinished
    ]


def _walk(root: Path) -> dict[str, int]:
    """Storage key -> size of every file under ``root``, without the writes in progress
    (``.<name>.<random>.partial``, renamed into place once complete)."""
    sizes: dict[str, int] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            if name.startswith(".") and name.endswith(".partial"):
                continue
            path = Path(directory, name)
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile (a janitor's purge)
                sizes[path.relative_to(root).as_posix()] = path.stat().st_size
    return sizes
