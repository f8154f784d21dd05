"""Traces and run metrics in-process (no service): when tracing is on (the ``OTEL_*``
variables), what the spans of a run look like, and that nothing is traced when it is off.
The same on a real worker with an OTLP receiver: tests/test_observability.py."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from flows.engine import Execution
from flows.observing import NO_OBSERVER, Observability, RunFacts
from flows.run_metrics import RunMetrics
from flows.tracing import Tracing, exporters_of, valid_traceparent
from tests.processes import CountingServer
from tests.support import canvas, compiled, make_registry, node

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ()),
        ({"OTEL_TRACES_EXPORTER": "zipkin,otlp"}, ("otlp",)),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_ask(environ: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert exporters_of(environ) == exporters
    assert (Tracing.from_environment(environ) is not None) == bool(exporters)


def test_untraced_processes_observe_nothing() -> None:
    observability = Observability.from_environment({})
    assert observability.tracing is None and observability.metrics is None
    assert observability.run(facts()) is NO_OBSERVER


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (f"00-{TRACE_ID}-{PARENT}-01", f"00-{TRACE_ID}-{PARENT}-01"),
        (f"00-{TRACE_ID.upper()}-{PARENT}-01", f"00-{TRACE_ID}-{PARENT}-01"),
        (f"00-{'0' * 32}-{PARENT}-01", None),  # an all-zero trace id is invalid
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"ff-{TRACE_ID}-{PARENT}-01", None),  # version ff is forbidden
        ("00-abc-def-01", None),
        (None, None),
    ],
)
def test_traceparent_of_a_request(given: str | None, kept: str | None) -> None:
    assert valid_traceparent(given) == kept


def facts(traceparent: str | None = None, workflow: str = "traced") -> RunFacts:
    return RunFacts("run-1", workflow, "wf-1", 3, "api", traceparent, None)


def traced() -> tuple[Observability, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Observability(Tracing(provider), RunMetrics()), exporter


async def run_observed(raw: dict, observability: Observability, traceparent: str | None = None) -> dict:
    registry = make_registry()
    observer = observability.run(facts(traceparent, raw["name"]))
    execution = Execution(compiled(raw, registry), registry, run_id="run-1", inputs={}, observer=observer)
    execution.bus.subscribe(observer.event)
    try:
        record = await execution.run()
    finally:
        observer.close()
    return record.result()


def by_node(spans: tuple[ReadableSpan, ...], node_id: str) -> list[ReadableSpan]:
    found = [s for s in spans if (s.attributes or {}).get("flowmaestro.node.id") == node_id]
    return sorted(found, key=lambda s: str((s.attributes or {})["flowmaestro.node.path"]))


async def test_a_runs_spans_nest_as_its_scopes_under_the_requests_span() -> None:
    observability, exporter = traced()
    raw = canvas(
        [
            node("start", "start"),
            node("lp", "loop", data={"mode": "forEach", "items": [1, 2, 3]}),
            node("double", parentId="lp", data={"output": "{{ loop.item * 2 }}"}),
            node("bad", data={"output": "{{ lp.results[0] // 0 }}"}),
        ],
        [("start", "lp"), ("lp", "bad")],
        name="nesting",
    )
    result = await run_observed(raw, observability, f"00-{TRACE_ID}-{PARENT}-01")
    assert result["status"] == "failed"
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 + 1 + 1 + 3 + 1  # run, start, loop, 3 iterations, bad
    (run,) = [s for s in spans if s.name == "run nesting"]
    assert run.context.trace_id == int(TRACE_ID, 16) and run.parent is not None
    assert run.parent.span_id == int(PARENT, 16) and run.parent.is_remote
    assert run.status.status_code == StatusCode.ERROR and run.attributes["flowmaestro.run.status"] == "failed"
    (loop,) = by_node(spans, "lp")
    assert loop.parent is not None and loop.parent.span_id == run.context.span_id
    doubles = by_node(spans, "double")
    assert [s.attributes["flowmaestro.node.path"] for s in doubles] == ["0", "1", "2"]
    assert all(s.parent is not None and s.parent.span_id == loop.context.span_id for s in doubles)
    assert all(s.attributes["flowmaestro.node.status"] == "completed" for s in doubles)
    (bad,) = by_node(spans, "bad")
    assert bad.status.status_code == StatusCode.ERROR and bad.attributes["flowmaestro.node.status"] == "failed"
    assert bad.attributes["error.type"] == "TemplateError"
    assert all(s.context.trace_id == int(TRACE_ID, 16) for s in spans)

    metrics = observability.metrics
    assert metrics is not None
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "flowmaestro_node_executions_total",
            {"workflow": "nesting", "node_type": "transform", "status": "completed"},
        )
        == 3
    )
    assert (
        registry.get_sample_value(
            "flowmaestro_node_executions_total", {"workflow": "nesting", "node_type": "transform", "status": "failed"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("flowmaestro_run_duration_seconds_count", {"workflow": "nesting", "status": "failed"})
        == 1
    )


async def test_http_nodes_send_their_spans_traceparent_only_when_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")
    with CountingServer() as server:
        raw = canvas(
            [
                node("call", "http", data={"url": f"{server.url}/echo?echo=1"}),
                node("end", "end", data={"output": "{{ call }}"}),
            ],
            [("call", "end")],
            name="calls",
        )
        observability, exporter = traced()
        traced_result = await run_observed(raw, observability)
        untraced_result = await run_observed(raw, Observability())
    (call,) = by_node(exporter.get_finished_spans(), "call")
    sent = traced_result["output"]["body"]["headers"]
    context = call.context
    version, trace_id, span_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{context.trace_id:032x}", f"{context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert "traceparent" not in untraced_result["output"]["body"]["headers"]
