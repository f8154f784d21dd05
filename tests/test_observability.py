"""Traces, metrics and /health on a real stack: ``flowmaestro serve`` (the API, no worker of
its own) and one ``flowmaestro worker`` process, the session's Prefect server, an OTLP/HTTP
receiver (tests/otlp_server.py), the fake OpenAI server and a local HTTP server.

One run of a workflow with a loop of http calls, an llm call and a sub-workflow, started
with a ``traceparent``, gives the whole span tree; the worker's and the API's /metrics
count the same run. /health names the API's pool while no worker polls it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.openai_server import FakeOpenAI
from tests.otlp_server import OtlpReceiver, Span
from tests.processes import CountingServer, Proc, free_port, stack_env, start_serve, start_worker, wait_until
from tests.support import canvas, node

pytestmark = [pytest.mark.workers, pytest.mark.timeout(300)]

PRICE = {"input_per_1m": 3.0, "output_per_1m": 15.0}


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    base: str
    key: str
    metrics_key: str
    metrics_port: int
    pool: str
    receiver: OtlpReceiver
    openai: FakeOpenAI
    echo: CountingServer

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, prefect_server) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("observe")
    key, metrics_key = f"k-{uuid.uuid4().hex}", f"m-{uuid.uuid4().hex}"
    metrics_port = free_port()
    with OtlpReceiver().running() as receiver, FakeOpenAI().running() as openai, CountingServer() as echo:
        env = stack_env(
            home,
            prefect_server,
            f"sqlite+aiosqlite:///{home / 'store.db'}",
            key,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_SERVICE_NAME="flowmaestro-test",
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms: the receiver sees spans soon after they end
            FLOWMAESTRO_OPENAI_BASE_URL=openai.base_url,
            FLOWMAESTRO_OPENAI_API_KEY="sk-test",
            FLOWMAESTRO_LLM_PRICES=json.dumps({"text": PRICE}),
            FLOWMAESTRO_WORKER_METRICS_PORT=str(metrics_port),
            FLOWMAESTRO_METRICS_KEY=metrics_key,
            FLOWMAESTRO_WORKER_GRACE_S="2",
        )
        serve, base = start_serve(home, env, workers=0)
        try:
            yield Stack(
                home, env, base, key, metrics_key, metrics_port, env["FLOWMAESTRO_WORK_POOL"], receiver, openai, echo
            )
        finally:
            serve.stop()


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Proc]:
    proc = start_worker(stack.home, stack.env, name=f"observe-{uuid.uuid4().hex[:6]}")
    try:
        yield proc
    finally:
        proc.stop()


def pools_of(stack: Stack) -> dict[str, dict]:
    answer = httpx.get(f"{stack.base}/health", timeout=30)
    assert answer.status_code == 200, answer.text  # a pool without worker: the API itself is up
    return answer.json()["pools"]


def test_health_names_the_pool_no_worker_polls(stack: Stack, request: pytest.FixtureRequest) -> None:
    pools = pools_of(stack)
    assert list(pools) == [stack.pool]
    assert pools[stack.pool] == {
        "status": "no live worker: runs sent to this pool wait until a worker polls it",
        "live_workers": 0,
    }
    request.getfixturevalue("worker")  # a worker polls it from now on
    live = wait_until(
        lambda: pools_of(stack)[stack.pool]["status"] == "ok" and pools_of(stack),
        timeout=60,
        what="the pool's worker seen live",
    )
    assert live[stack.pool] == {"status": "ok", "live_workers": 1}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_runs_span_tree_and_its_metrics(stack: Stack, worker: Proc) -> None:
    suffix = uuid.uuid4().hex[:6]
    child_name, parent_name = f"obs-child-{suffix}", f"obs-parent-{suffix}"
    child_raw = canvas(
        [
            node("start", "start"),
            node("double", data={"output": "{{ inputs.n * 2 }}"}),
            node("end", "end", data={"output": "{{ double }}"}),
        ],
        [("start", "double"), ("double", "end")],
        name=child_name,
        inputs={"n": {"type": "number", "required": True}},
    )
    with stack.api() as api:
        child = api.post("/api/workflows", json={"canvas": child_raw})
        assert child.status_code == 201, child.text
        parent_raw = canvas(
            [
                node("start", "start"),
                node("each", "loop", data={"mode": "forEach", "items": [1, 2]}),
                node(
                    "fetch",
                    "http",
                    parentId="each",
                    data={"method": "GET", "url": f"{stack.echo.url}/ping?echo=1&i={{{{ loop.item }}}}"},
                ),
                node("ask", "llm", data={"model": "text", "prompt": "Say hello"}),
                node("sub", "subworkflow", data={"workflow": child.json()["id"], "inputs": {"n": 21}}),
                node(
                    "end",
                    "end",
                    data={"output": {"fetched": "{{ each.results }}", "text": "{{ ask.text }}", "sub": "{{ sub }}"}},
                ),
            ],
            [("start", "each"), ("each", "ask"), ("ask", "sub"), ("sub", "end")],
            name=parent_name,
        )
        parent = api.post("/api/workflows", json={"canvas": parent_raw})
        assert parent.status_code == 201, parent.text
        trace_id, request_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
        started = api.post(
            f"/api/workflows/{parent.json()['id']}/execute",
            json={"inputs": {}},
            headers={"traceparent": f"00-{trace_id}-{request_span}-01"},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["execution_id"]

        def final() -> dict | None:
            body = api.get(f"/api/executions/{run_id}").json()
            return body if body.get("status") in ("completed", "failed", "cancelled") else None

        result = wait_until(final, timeout=120, interval=0.5, what="the run ending")
        assert result["status"] == "completed", (result, worker.output())
        output = result["output"]

    # 1 parent run + 7 node executions (fetch twice) + 1 child run + its 3 nodes.
    spans = wait_until(
        lambda: len(stack.receiver.of_trace(trace_id)) >= 12 and stack.receiver.of_trace(trace_id),
        timeout=60,
        what="the run's 12 spans at the OTLP receiver",
    )
    assert len(spans) == 12, [s.name for s in spans]
    assert {s.service for s in spans} == {"flowmaestro-test"}
    by_id = {s.span_id: s for s in spans}
    runs = [s for s in spans if "flowmaestro.run.id" in s.attributes]
    nodes = [s for s in spans if "flowmaestro.node.id" in s.attributes]
    assert len(runs) == 2 and len(nodes) == 10

    (top,) = [s for s in runs if s.attributes["flowmaestro.run.id"] == run_id]
    assert top.parent_span_id == request_span  # the execute request's traceparent
    assert top.name == f"run {parent_name}" and top.attributes["flowmaestro.workflow"] == parent_name
    assert top.attributes["flowmaestro.run.status"] == "completed" and top.status == 1

    def node_spans(node_id: str, run: Span) -> list[Span]:
        found = [s for s in nodes if s.attributes["flowmaestro.node.id"] == node_id and under(s, run)]
        return sorted(found, key=lambda s: s.attributes["flowmaestro.node.path"])

    def under(span: Span, run: Span) -> bool:
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            if span is run:
                return True
            if "flowmaestro.run.id" in span.attributes:
                return False
        return False

    for node_id in ("start", "each", "ask", "sub", "end"):
        (span,) = node_spans(node_id, top)
        assert span.parent_span_id == top.span_id, node_id
        assert span.attributes["flowmaestro.node.status"] == "completed" and span.status == 1
        assert span.attributes["flowmaestro.node.attempts"] >= 1 or node_id in ("each", "sub")
    (loop,) = node_spans("each", top)
    assert loop.attributes["flowmaestro.node.type"] == "loop"

    # The loop's iterations under the loop; each http call carried its own span as traceparent.
    fetches = node_spans("fetch", top)
    assert [s.attributes["flowmaestro.node.path"] for s in fetches] == ["0", "1"]
    assert all(s.parent_span_id == loop.span_id for s in fetches)
    assert all(s.attributes["flowmaestro.node.attempts"] == 1 for s in fetches)
    seen = [fetched["body"]["headers"]["traceparent"].split("-")[:3] for fetched in output["fetched"]]
    assert seen == [["00", trace_id, s.span_id] for s in fetches]

    # The llm call: GenAI semantic conventions, the tokens the model reported, the cost.
    (ask,) = node_spans("ask", top)
    usage = result["nodes"]["ask"]["output"]["usage"] if "nodes" in result else None
    tokens_in = ask.attributes["gen_ai.usage.input_tokens"]
    assert tokens_in > 0 and ask.attributes["gen_ai.usage.output_tokens"] == 4
    if usage is not None:
        assert tokens_in == usage["input_tokens"]
    assert ask.attributes["gen_ai.system"] == "openai" and ask.attributes["gen_ai.request.model"] == "text"
    assert ask.attributes["gen_ai.operation.name"] == "chat"
    cost = (tokens_in * PRICE["input_per_1m"] + 4 * PRICE["output_per_1m"]) / 1_000_000
    assert ask.attributes["flowmaestro.cost_usd"] == pytest.approx(cost)

    # The child run under its sub-workflow node, its nodes under it.
    (sub,) = node_spans("sub", top)
    (child_run,) = [s for s in runs if s is not top]
    assert child_run.parent_span_id == sub.span_id
    assert child_run.attributes["flowmaestro.workflow"] == child_name
    assert [node_spans(n, child_run)[0].parent_span_id for n in ("start", "double", "end")] == [child_run.span_id] * 3
    assert output["sub"] == 42

    # The worker's metrics count the same run.
    def scraped() -> dict | None:
        answer = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10)
        assert answer.status_code == 200
        samples = metric_samples(answer.text)
        # The run's slot is let go once its flow has told Prefect, just after the result is stored.
        return samples if sample(samples, "flowmaestro_worker_slots_in_use") == 0 else None

    samples = wait_until(scraped, timeout=60, what="the worker's slot let go")
    assert (
        sample(samples, "flowmaestro_node_executions_total", workflow=parent_name, node_type="http", status="completed")
        == 2
    )
    assert sample(samples, "flowmaestro_node_duration_seconds_count", workflow=parent_name, node_type="http") == 2
    assert sample(samples, "flowmaestro_node_duration_seconds_count", workflow=child_name, node_type="transform") == 1
    assert sample(samples, "flowmaestro_run_duration_seconds_count", workflow=parent_name, status="completed") == 1
    assert sample(samples, "flowmaestro_run_duration_seconds_count", workflow=child_name, status="completed") == 1
    assert sample(samples, "flowmaestro_model_tokens_total", model="text", kind="input") == tokens_in
    assert sample(samples, "flowmaestro_model_tokens_total", model="text", kind="output") == 4
    assert sample(samples, "flowmaestro_model_cost_usd_total", model="text") == pytest.approx(cost)
    assert sample(samples, "flowmaestro_run_start_delay_seconds_count") == 1  # the top-level run only
    assert 0 < sample(samples, "flowmaestro_run_start_delay_seconds_sum") < 60
    assert sample(samples, "flowmaestro_worker_slots") == 20
    assert sample(samples, "flowmaestro_worker_slots_in_use") == 0

    # The API's: the run it started, and how it ended (from the store).
    with httpx.Client(base_url=stack.base, timeout=30) as client:
        assert client.get("/metrics").status_code == 401  # the metrics key only
        api_metrics = client.get("/metrics", headers={"Authorization": f"Bearer {stack.metrics_key}"})
    assert api_metrics.status_code == 200
    api_samples = metric_samples(api_metrics.text)
    assert sample(api_samples, "flowmaestro_runs_started_total", workflow=parent_name) == 1
    assert sample(api_samples, "flowmaestro_runs_finished_total", workflow=parent_name, status="completed") == 1
