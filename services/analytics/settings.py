"""Typed settings of the analytics service (environment, prefix ``STYLESTUDIO_``)."""

from __future__ import annotations

from pydantic import Field

from kit.plans import Feature, plans_with
from kit.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    service_name: str = "analytics"

    # Ingestion: events read (and written in one transaction) per batch.
    ingest_batch_size: int = Field(default=1000, ge=1, le=5000)

    # The usage log's monthly partitions: how many months ahead of the current one are
    # created, how often the service checks, and how many whole months are kept before
    # a partition is dropped (0 keeps everything).
    usage_partitions_ahead_months: int = Field(default=2, ge=1, le=24)
    usage_retention_months: int = Field(default=13, ge=0)
    usage_partition_check_interval_seconds: float = Field(default=3600.0, gt=0)
    # Events stamped further in the future than this are recorded at arrival time instead.
    usage_max_clock_skew_seconds: float = Field(default=300.0, ge=0)

    # The audit log (security events, docs/security.md): days an event is kept (0: forever),
    # and how often the events past it are deleted.
    audit_retention_days: int = Field(default=365, ge=0)
    audit_purge_interval_seconds: float = Field(default=3600.0, gt=0)

    # LogUserAction: how big the client's metadata may be once encoded, and how much of
    # the user agent is kept.
    # The actions clients may log with LogUserAction (the services' own actions are refused).
    usage_client_actions: list[str] = [
        "page_view",
        "feature_used",
        "file_download",
        "generation_viewed",
        "result_shared",
        "feedback_submitted",
        "onboarding_step",
        "search",
    ]
    usage_metadata_max_bytes: int = Field(default=4096, ge=64)
    usage_user_agent_max_length: int = Field(default=256, ge=16)

    # Query bounds.
    activity_recent_default: int = 10
    activity_recent_max: int = 100
    metrics_window_default: str = "24h"
    system_window_default: str = "7d"
    # The longest window a metrics or analytics query may cover.
    analytics_window_max_days: int = Field(default=400, ge=1)
    # The plans whose users see their own advanced analytics (admins always may).
    # Default: the plans kit/plans.py says include advanced analytics (as the entitlements show).
    advanced_analytics_plans: list[str] = plans_with(Feature.ADVANCED_ANALYTICS)
    # How many models, styles and error reasons the analytics lists at most.
    analytics_top_n: int = Field(default=10, ge=1, le=100)
