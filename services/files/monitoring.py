"""What the files service tells Prometheus beyond the kit's figures (docs/operations.md,
"Metrics"): uploads refused, by the reason the caller was given."""

from __future__ import annotations

from prometheus_client import Counter

from kit.metrics import ServiceMetrics

uploads_refused = Counter(
    "stylestudio_files_uploads_refused",
    "Uploads refused, by the error reason the caller got (FILE_TOO_LARGE, QUOTA_EXCEEDED, "
    "VALIDATION_ERROR for a file that is not an image ...).",
    ["reason"],
    registry=None,
)


def watch(metrics: ServiceMetrics) -> None:
    metrics.register(uploads_refused)
