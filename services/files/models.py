"""The files service's tables, all in the ``files`` schema."""

from __future__ import annotations

import sqlalchemy as sa

from kit.db import service_metadata
from kit.events import event_tables

metadata = service_metadata("files")
outbox, inbox = event_tables(metadata)

ACTIVE, DELETED = "active", "deleted"

# One row per stored image. A deleted file keeps its row (status "deleted") until the janitor has
# removed its bytes from storage (purged_at); it is invisible to its owner from the moment of delete.
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("format", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    # Where the bytes are: the back end that holds them and its key (a path or a public id).
    sa.Column("storage_backend", sa.Text, nullable=False),
    sa.Column("storage_key", sa.Text, nullable=False),
    sa.Column("storage_version", sa.Text, nullable=False, server_default=""),
    # The small rendition's key in the same back end, once made (None: not made yet).
    sa.Column("thumbnail_key", sa.Text),
    sa.Column("status", sa.Text, nullable=False, server_default=ACTIVE),
    sa.Column("generation_id", sa.Text),
    sa.Column("image_order", sa.Integer),
    sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("idempotency_key", sa.Text),
    # kit.idempotency's fingerprint of the upload (its metadata and the digest of its bytes).
    sa.Column("request_hash", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("purged_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("status IN ('active', 'deleted')", name="status"),
    sa.Index("ix_files_owner_listing", "user_id", "status", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index(
        "uq_files_idempotency",
        "user_id",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    # A generation's results are stored once: a retried store cannot add a second set.
    sa.Index(
        "uq_files_generation_result",
        "generation_id",
        "image_order",
        unique=True,
        postgresql_where=sa.text("generation_id IS NOT NULL"),
    ),
    sa.Index(
        "ix_files_awaiting_purge",
        "deleted_at",
        postgresql_where=sa.text("status = 'deleted' AND purged_at IS NULL"),
    ),
)

# Per user: bytes held by active files and bytes reserved by uploads in flight. The quota check is
# one conditional UPDATE of this row, so concurrent uploads can never overshoot it together.
storage_accounts = sa.Table(
    "storage_accounts",
    metadata,
    sa.Column("user_id", sa.Text, primary_key=True),
    # The plan last seen in the user's access token (internal summaries have no token to read).
    sa.Column("plan", sa.Text, nullable=False, server_default="free"),
    sa.Column("used_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("used_bytes >= 0 AND reserved_bytes >= 0", name="non_negative"),
)

# An upload in flight: the bytes it has reserved, and where its bytes go once accepted. A row left
# behind by a crashed process is found by the janitor, which gives the bytes back and removes
# anything already written under storage_key.
upload_reservations = sa.Table(
    "upload_reservations",
    metadata,
    sa.Column("file_id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("storage_backend", sa.Text, nullable=False),
    sa.Column("storage_key", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_upload_reservations_updated_at", "updated_at"),
)

# Files pinned by a running generation: they cannot be deleted until released.
file_references = sa.Table(
    "file_references",
    metadata,
    sa.Column("generation_id", sa.Text, primary_key=True),
    sa.Column("file_id", sa.Uuid, sa.ForeignKey("files.files.id"), primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_file_references_file_id", "file_id"),
)

# Generations that did not complete and whose results were discarded: storing results for
# one of them later (a worker's store that lost the race with a cancel) is refused.
discarded_generations = sa.Table(
    "discarded_generations",
    metadata,
    sa.Column("generation_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Index("ix_discarded_generations_discarded_at", "discarded_at"),
)
