"""Files, storage accounts, upload reservations and generation references.

Revision ID: files_0002
Revises: files_0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "files_0002"
down_revision = "files_0001"
branch_labels = None
depends_on = None

SCHEMA = "files"


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("filename", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("storage_backend", sa.Text, nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("storage_version", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("generation_id", sa.Text),
        sa.Column("image_order", sa.Integer),
        sa.Column("is_primary", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("purged_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        sa.CheckConstraint("status IN ('active', 'deleted')", name="ck_files_status"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_files_owner_listing",
        "files",
        ["user_id", "status", sa.text("created_at DESC"), sa.text("id DESC")],
        schema=SCHEMA,
    )
    op.create_index(
        "uq_files_idempotency",
        "files",
        ["user_id", "idempotency_key"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "uq_files_generation_result",
        "files",
        ["generation_id", "image_order"],
        unique=True,
        schema=SCHEMA,
        postgresql_where=sa.text("generation_id IS NOT NULL"),
    )
    op.create_index(
        "ix_files_awaiting_purge",
        "files",
        ["deleted_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status = 'deleted' AND purged_at IS NULL"),
    )
    op.create_table(
        "storage_accounts",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("plan", sa.Text, nullable=False, server_default="free"),
        sa.Column("used_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reserved_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("user_id", name="pk_storage_accounts"),
        sa.CheckConstraint(
            "used_bytes >= 0 AND reserved_bytes >= 0", name="ck_storage_accounts_non_negative"
        ),
        schema=SCHEMA,
    )
    op.create_table(
        "upload_reservations",
        sa.Column("file_id", sa.Uuid, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("storage_backend", sa.Text, nullable=False),
        sa.Column("storage_key", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("file_id", name="pk_upload_reservations"),
        schema=SCHEMA,
    )
    op.create_index("ix_upload_reservations_updated_at", "upload_reservations", ["updated_at"], schema=SCHEMA)
    op.create_table(
        "file_references",
        sa.Column("generation_id", sa.Text, nullable=False),
        sa.Column("file_id", sa.Uuid, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("generation_id", "file_id", name="pk_file_references"),
        sa.ForeignKeyConstraint(["file_id"], [f"{SCHEMA}.files.id"], name="fk_file_references_file_id_files"),
        schema=SCHEMA,
    )
    op.create_index("ix_file_references_file_id", "file_references", ["file_id"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("file_references", schema=SCHEMA)
    op.drop_table("upload_reservations", schema=SCHEMA)
    op.drop_table("storage_accounts", schema=SCHEMA)
    op.drop_table("files", schema=SCHEMA)
