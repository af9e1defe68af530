"""How `stylestudio trace` reads a trace (kit/tracetree.py): the critical path, hops, links,
errors and compensations, on a made-up failed generation."""

from __future__ import annotations

import io
from typing import Any

from kit.tracetree import Trace, render

MS = 1_000_000


def _span(
    span_id: str, parent: str, name: str, service: str, start: int, end: int, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "service": f"stylestudio-{service}",
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_span_id": parent,
        "kind": extra.pop("kind", "INTERNAL"),
        "start_ns": start * MS,
        "end_ns": end * MS,
        "status": extra.pop("status", "UNSET"),
        "status_message": extra.pop("status_message", ""),
        "attributes": extra.pop("attributes", {}),
        "links": extra.pop("links", []),
        "events": extra.pop("events", []),
    }


# The gateway's POST starts the generation (price, hold) and publishes its job; the worker takes it
# 5 ms later, the provider fails, and the hold is released. Analytics counts the start on the side.
FAILED_GENERATION = [
    _span("01", "", "POST /v1/generations", "gateway", 0, 40, kind="SERVER"),
    _span("02", "01", "StartGeneration", "generation", 2, 38, kind="SERVER"),
    _span("03", "02", "EstimateCost", "billing", 4, 10, kind="CLIENT"),
    _span("04", "02", "ReserveTokens", "billing", 12, 30, kind="CLIENT"),
    _span(
        "05",
        "02",
        "publish generation.job",
        "generation",
        31,
        31,
        kind="PRODUCER",
        attributes={"messaging.destination.name": "jobs.generation"},
    ),
    _span("06", "05", "process generation.job", "generation", 36, 200, kind="CONSUMER"),
    _span(
        "07",
        "06",
        "provider local",
        "generation",
        40,
        150,
        status="ERROR",
        status_message="ProviderError",
        attributes={"stylestudio.generation.error": "PROCESSING_ERROR"},
        events=[
            {
                "name": "exception",
                "time_ns": 149 * MS,
                "attributes": {
                    "exception.type": "ProviderError",
                    "exception.message": "ProviderError: failed",
                },
            }
        ],
    ),
    _span(
        "08",
        "06",
        "/stylestudio.billing.v1.BillingService/ReleaseHold",
        "generation",
        160,
        190,
        kind="CLIENT",
        attributes={"rpc.method": "ReleaseHold", "stylestudio.billing.hold.id": "hold-1"},
    ),
    _span(
        "09",
        "05",
        "process batch",
        "analytics",
        33,
        60,
        kind="CONSUMER",
        links=[{"trace_id": "cd" * 16, "span_id": "ff" * 8, "attributes": {}}],
    ),
]


def test_the_critical_path_follows_the_work_the_end_waited_for() -> None:
    trace = Trace(FAILED_GENERATION)
    # The queue hop's consumer ends last: the path runs through the job, not the analytics batch;
    # inside the start, the hold (ReserveTokens) then the price, which ran one after the other.
    assert trace.critical == {"01", "02", "03", "04", "05", "06", "07", "08"}
    printed = trace.as_json()
    assert printed["trace_id"] == "ab" * 16
    assert [span["critical"] for span in printed["spans"]] == [True] * 5 + [False, True, True, True]


# A batch of another trace that handled the job's event (its links name the producer span).
ELSEWHERE = [
    _span("aa", "", "process batch", "analytics", 50, 70, kind="CONSUMER")
    | {"trace_id": "ef" * 16, "links": [{"trace_id": "ab" * 16, "span_id": "05", "attributes": {}}]}
]


def test_the_tree_shows_hops_links_errors_and_compensations() -> None:
    out = io.StringIO()
    render(Trace(FAILED_GENERATION, linked_from=ELSEWHERE), out)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith(
        f"trace {'ab' * 16}: 9 spans, 4 services (analytics, billing, gateway, generation), 200 ms"
    )
    assert "1 with errors" in lines[0]
    provider = next(line for line in lines if "provider local" in line)
    assert (
        provider.startswith("*!")
        and "[ERROR: ProviderError]" in provider
        and "error=PROCESSING_ERROR" in provider
    )
    release = next(line for line in lines if "ReleaseHold" in line)
    assert release.startswith("*~") and "hold=hold-1" in release
    assert "! exception ProviderError: ProviderError: failed" in text
    job = next(line for line in lines if "process generation.job" in line)
    assert "<- hop generation -> jobs.generation -> generation, waited 5.00 ms" in job
    assert f"link -> trace {'cd' * 16} span {'ff' * 8}" in text
    publish = lines.index(next(line for line in lines if "publish generation.job" in line))
    assert f"linked from analytics process batch (trace {'ef' * 16})" in lines[publish + 1]
    offsets = [line[3:14].strip() for line in lines[2:] if line[3:25].strip()]
    assert offsets[:3] == ["0.00 ms", "2.00 ms", "4.00 ms"]
