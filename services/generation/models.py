"""The generation service's tables, all in the ``generation`` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from kit.db import service_metadata
from kit.events import event_tables

metadata = service_metadata("generation")
outbox, inbox = event_tables(metadata)

# One row per generation; ``status`` is a lifecycle.Status name.
generations = sa.Table(
    "generations",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    # The decided outcome (COMPLETED, FAILED, CANCELED) before its billing step ran.
    sa.Column("resolution", sa.Text),
    sa.Column("error_reason", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("enhanced_prompt", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("style", sa.Text, nullable=False),
    sa.Column("quality", sa.Text, nullable=False),
    sa.Column("aspect_ratio", sa.Text, nullable=False),
    sa.Column("num_images", sa.Integer, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("seed_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    # Empty: none. NULL: the model's default guidance.
    sa.Column("negative_prompt", sa.Text, nullable=False, server_default=""),
    sa.Column("guidance_scale", sa.Double),
    sa.Column("product_image_files", ARRAY(sa.Text), nullable=False),
    sa.Column("model_image_files", ARRAY(sa.Text), nullable=False),
    sa.Column("result_image_files", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("token_cost", sa.BigInteger, nullable=False),
    sa.Column("hold_id", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    # Hash of the request, so a reused idempotency key with another request is a CONFLICT.
    sa.Column("request_hash", sa.Text),
    sa.Column("batch", sa.Boolean, nullable=False, server_default=sa.false()),
    # The batch it was created in (batches.id); None for single creations and older batches.
    sa.Column("batch_id", sa.Uuid),
    sa.Column("trace_id", sa.Text, nullable=False, server_default=""),
    # W3C context of the saga's root, so sweeper and webhook work joins the generation's trace.
    sa.Column("traceparent", sa.Text, nullable=False, server_default=""),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("prediction_id", sa.Text),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    # The worker that set PROCESSING owns the generation until then.
    sa.Column("lease_until", sa.DateTime(timezone=True)),
    sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
    sa.Column("processing_time_ms", sa.BigInteger),
    sa.Index("ix_generations_user_created", "user_id", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index(
        "uq_generations_user_idempotency_key",
        "user_id",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index(
        "ix_generations_unfinished",
        "updated_at",
        postgresql_where=sa.text("status NOT IN ('COMPLETED', 'FAILED', 'CANCELED')"),
    ),
    sa.Index("ix_generations_batch_id", "batch_id", postgresql_where=sa.text("batch_id IS NOT NULL")),
    sa.Index(
        "ix_generations_prediction", "prediction_id", postgresql_where=sa.text("prediction_id IS NOT NULL")
    ),
)

# One row per BatchCreateGenerations call (per idempotency key when one is given). Its summary
# (generation.batch_completed) is published once, when the batch is sealed (every item was
# started or refused) and none of its generations is still running; see batches.py.
batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),
    # The number of requests in the batch.
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("sealed_at", sa.DateTime(timezone=True)),
    sa.Column("summarized_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("size > 0", name="size_positive"),
)

# Replicate webhook deliveries already handled (Replicate retries; each webhook-id acts once).
replicate_webhooks = sa.Table(
    "replicate_webhooks",
    metadata,
    sa.Column("webhook_id", sa.Text, primary_key=True),
    sa.Column("prediction_id", sa.Text, nullable=False),
    sa.Column("prediction_status", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
