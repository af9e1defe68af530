"""The local span store (kit/spanstore.py), the tail decision that feeds it (kit/sampling.py) and
the tracer set-up around them (kit/telemetry.py): OTEL_* variables, OTLP, scrubbed errors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Link, Status, StatusCode
from sqlalchemy.exc import StatementError

from kit import sampling
from kit.launcher import LaunchSettings
from kit.sampling import PRODUCTION_SAMPLE_RATIO, KeptTraces, RecordEverything, head_sampler
from kit.settings import PlatformSettings
from kit.spanstore import ACTIVE_SUFFIX, CLOSED_SUFFIX, SpanStore
from kit.telemetry import (
    ATTR_GENERATION_ID,
    ATTR_REQUEST_ID,
    ATTR_SERVICE,
    otlp_exporter,
    scrubbed_span,
    service_resource,
    span_as_dict,
)


def _span(trace: int, span: int, start: int, **attributes: str) -> dict[str, object]:
    return {
        "name": f"span {span}",
        "service": "stylestudio-test",
        "trace_id": f"{trace:032x}",
        "span_id": f"{span:016x}",
        "parent_span_id": "",
        "kind": "INTERNAL",
        "start_ns": start,
        "end_ns": start + 10,
        "status": "UNSET",
        "status_message": "",
        "attributes": attributes,
        "links": [],
        "events": [],
    }


def test_find_returns_the_whole_trace_by_trace_generation_or_request_id(tmp_path: Path) -> None:
    gateway = SpanStore(tmp_path, writer="gateway")
    generation = SpanStore(tmp_path, writer="generation")
    gateway.append([_span(1, 1, 100, **{ATTR_REQUEST_ID: "req-1"}), _span(2, 9, 50)])
    generation.append([_span(1, 2, 120, **{ATTR_GENERATION_ID: "gen-1"}), _span(1, 3, 110)])
    # The generation id appears again later in another trace: the first appearance wins.
    generation.append([_span(3, 4, 900, **{ATTR_GENERATION_ID: "gen-1"})])

    reader = SpanStore(tmp_path)
    expected = ["0000000000000001", "0000000000000003", "0000000000000002"]
    for ident in (f"{1:032x}", f"{1:032X}", "gen-1", " req-1 "):
        found = reader.find(ident)
        assert found is not None and [span["span_id"] for span in found] == expected, ident
    assert reader.find("gen-2") is None and reader.find("") is None and reader.find('"') is None
    batch = _span(5, 7, 130) | {
        "links": [{"trace_id": f"{1:032x}", "span_id": f"{3:016x}", "attributes": {}}]
    }
    gateway.append([batch])
    assert reader.linking_to(f"{1:032x}") == [batch] and reader.linking_to(f"{2:032x}") == []
    found = reader.find(f"{1:032x}")
    assert found is not None and len(found) == 3  # a span linking in is not part of the trace
    assert SpanStore(tmp_path / "missing").find("gen-1") is None


def test_the_size_bound_drops_the_oldest_segments_of_any_writer(tmp_path: Path) -> None:
    bound = 64 * 1024
    old = SpanStore(tmp_path, max_bytes=bound, writer="old")
    old.append([_span(1, index, index) for index in range(40)])
    old.close()
    first = old.segments()
    assert [segment.path.suffix for segment in first] == [CLOSED_SUFFIX]

    store = SpanStore(tmp_path, max_bytes=bound, writer="new")
    for batch in range(200):
        store.append([_span(2 + batch, index, batch * 100 + index) for index in range(10)])
    segments = store.segments()
    assert first[0].path not in {segment.path for segment in segments}
    assert sum(segment.size for segment in segments) <= bound + store.segment_bytes
    assert len(segments) > 2
    assert SpanStore(tmp_path).find(f"{2 + 199:032x}") is not None
    assert SpanStore(tmp_path).find(f"{2:032x}") is None


def test_retention_drops_segments_older_than_it(tmp_path: Path) -> None:
    stale = SpanStore(tmp_path, writer="stale")
    stale.append([_span(1, 1, 1)])
    stale.close()
    (segment,) = stale.segments()
    day_ago = time.time() - 24 * 3600
    os.utime(segment.path, (day_ago, day_ago))

    store = SpanStore(tmp_path, retention_seconds=3600, writer="fresh")
    store.append([_span(2, 1, 2)])  # a writer prunes when it opens its first segment
    assert [s.path.suffix for s in store.segments()] == [ACTIVE_SUFFIX]
    assert store.find(f"{1:032x}") is None and store.find(f"{2:032x}") is not None


def test_a_writer_whose_open_segment_was_dropped_starts_another(tmp_path: Path) -> None:
    store = SpanStore(tmp_path, writer="gateway")
    store.append([_span(1, 1, 1)])
    (segment,) = store.segments()
    segment.path.unlink()  # as another process's prune would
    store.append([_span(2, 1, 2)])
    assert store.find(f"{2:032x}") is not None


def _provider(tmp_path: Path, ratio: float, slow_seconds: float = 60.0) -> tuple[TracerProvider, SpanStore]:
    store = SpanStore(tmp_path, writer="test")
    provider = TracerProvider(
        resource=Resource.create({"service.name": "stylestudio-test"}),
        sampler=RecordEverything(head_sampler(ratio, production=True)),
    )
    provider.add_span_processor(KeptTraces(store, slow_seconds, span_as_dict))
    return provider, store


def test_with_a_ratio_of_zero_the_store_keeps_failed_and_slow_traces_only(tmp_path: Path) -> None:
    provider, store = _provider(tmp_path, 0.0, slow_seconds=5.0)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("quiet") as quiet:
        with tracer.start_as_current_span("quiet child"):
            pass
    with tracer.start_as_current_span("failing") as failing:
        with tracer.start_as_current_span("failed step") as step:
            step.set_status(Status(StatusCode.ERROR, "PROVIDER_UNAVAILABLE"))
            step.add_event("retry", {"stylestudio.generation.try": 2})
    slow = tracer.start_span("slow", start_time=1_000_000_000)
    slow.end(end_time=7_000_000_000)

    assert not quiet.get_span_context().trace_flags.sampled
    assert store.find(f"{quiet.get_span_context().trace_id:032x}") is None
    kept = store.find(f"{failing.get_span_context().trace_id:032x}")
    assert kept is not None and {span["name"] for span in kept} == {"failing", "failed step"}
    failed = next(span for span in kept if span["name"] == "failed step")
    assert (failed["status"], failed["status_message"]) == ("ERROR", "PROVIDER_UNAVAILABLE")
    (event,) = cast(list[dict[str, Any]], failed["events"])
    assert (event["name"], event["attributes"]) == ("retry", {"stylestudio.generation.try": 2})
    assert cast(int, failed["start_ns"]) <= event["time_ns"] <= cast(int, failed["end_ns"])
    assert store.find(f"{slow.get_span_context().trace_id:032x}") is not None
    provider.shutdown()


def test_sampled_traces_are_kept_whole_with_their_links(tmp_path: Path) -> None:
    provider, store = _provider(tmp_path, 1.0)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("producer") as producer:
        pass
    with tracer.start_as_current_span("batch", links=[Link(producer.get_span_context(), {"n": 1})]) as batch:
        pass
    kept = store.find(f"{batch.get_span_context().trace_id:032x}")
    assert kept is not None
    assert kept[0]["links"] == [
        {
            "trace_id": f"{producer.get_span_context().trace_id:032x}",
            "span_id": f"{producer.get_span_context().span_id:016x}",
            "attributes": {"n": 1},
        }
    ]
    provider.shutdown()


def test_standard_otel_variables_apply_where_the_platform_sets_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,service.namespace=shop")
    resource = service_resource("billing").attributes
    assert resource["service.name"] == "stylestudio-billing" and resource[ATTR_SERVICE] == "billing"
    assert (resource["deployment.environment"], resource["service.namespace"]) == ("staging", "shop")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "ledger")
    assert service_resource("billing").attributes["service.name"] == "ledger"

    # The platform's ratio first; else OTEL_TRACES_SAMPLER; else 1.0 in development, 0.1 in production.
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    assert "0.25" in head_sampler(None, production=True, env=env).get_description()
    assert head_sampler(None, production=True, env={"OTEL_TRACES_SAMPLER": "always_off"}) is ALWAYS_OFF
    assert "0.5" in head_sampler(0.5, production=True, env=env).get_description()
    assert "ParentBased" in head_sampler(None, production=True, env={}).get_description()
    assert f"{PRODUCTION_SAMPLE_RATIO}" in head_sampler(None, production=True, env={}).get_description()
    assert "1.0" in head_sampler(None, production=False, env={}).get_description()


def test_otlp_export_follows_the_platforms_endpoint_then_the_standard_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert otlp_exporter(PlatformSettings()) is None
    assert otlp_exporter(PlatformSettings(otel_exporter_otlp_endpoint="http://127.0.0.1:4317")) is not None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert otlp_exporter(PlatformSettings()) is not None


def test_make_run_keeps_spans_under_its_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STYLESTUDIO_SPAN_STORE_DIR", raising=False)
    monkeypatch.setenv("STYLESTUDIO_DATA_DIR", str(tmp_path))
    assert LaunchSettings().span_store_path == tmp_path / "spans"
    monkeypatch.setenv("STYLESTUDIO_SPAN_STORE_DIR", str(tmp_path / "elsewhere"))
    assert LaunchSettings().span_store_path == tmp_path / "elsewhere"


def test_parts_held_too_long_are_decided_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "MAX_OPEN_PARTS", 2)
    provider, store = _provider(tmp_path, 1.0)
    tracer = provider.get_tracer("test")
    roots = [tracer.start_span(f"stream {index}") for index in range(3)]
    child = tracer.start_span("first message", context=trace_api.set_span_in_context(roots[0]))
    child.end()  # three parts open: the oldest is written with what it holds
    kept = store.find(f"{roots[0].get_span_context().trace_id:032x}")
    assert kept is not None and [span["name"] for span in kept] == ["first message"]
    for root in roots:
        root.end()
    assert store.find(f"{roots[2].get_span_context().trace_id:032x}") is not None
    provider.shutdown()


def test_an_error_leaving_a_span_is_recorded_without_its_sql_or_parameters(tmp_path: Path) -> None:
    provider, store = _provider(tmp_path, 1.0)
    tracer = provider.get_tracer("test")
    leaked = "ada@example.com"
    with pytest.raises(StatementError):
        with scrubbed_span(tracer, "generation.start", attributes={ATTR_GENERATION_ID: "g-1"}):
            raise StatementError(
                "bad", "SELECT 1 WHERE email = %(email)s", {"email": leaked}, ValueError(leaked)
            )
    (span,) = cast(list[dict[str, Any]], store.find("g-1"))
    assert (span["status"], span["status_message"]) == ("ERROR", "StatementError")
    assert span["events"][0]["attributes"]["exception.message"] == "StatementError: ValueError"
    assert leaked not in json.dumps(span) and "SELECT" not in json.dumps(span)
    provider.shutdown()
