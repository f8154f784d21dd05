"""Issue 30, findings 3, 8, 9 and 10: the compiler and the API's event loop.

3. A 16,000-node chain of transforms each reading ``{{ n0 }}`` kept validate 55 s in the
   API's event loop (quadratic reference checks); /health waited as long; every execute
   compiled the saved canvas again.
8. ``rrule FREQ=SECONDLY`` and a 6-field cron got past the 10 s minimum interval (201).
9. A workflow named ``R&D <report>`` answered 500, was saved anyway and could never run.
10. A template of 5,000 nested parentheses: RecursionError, 500, 3,000 log lines.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import defaultdict

import httpx
import pytest

from builder.compiler import compile_canvas
from builder.graph import Ancestry, analyse_scope
from builder.limits import CompileLimits
from deployments.schedules import Timing, refuse_short_gaps
from deployments.workflow_deployments import deployment_name
from node_handlers.registry import build_registry
from store.errors import Invalid
from tests.support import wait_final

DEEP_TEMPLATE = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"


def chain(size: int, name: str = "chain") -> dict:
    """The attack: start, then ``size`` transforms in a chain, each reading ``n0``."""
    nodes = [{"id": "start", "type": "start"}]
    edges = []
    previous = "start"
    for i in range(size):
        nodes.append({"id": f"n{i}", "type": "transform", "data": {"output": "{{ n0 }}" if i else 1}})
        edges.append({"id": f"e{i}", "source": previous, "target": f"n{i}"})
        previous = f"n{i}"
    return {"name": name, "nodes": nodes, "edges": edges}


def compact(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- the compiler (no server)


def test_reference_checks_of_the_16000_chain_are_linear():
    """Before: 4,000 nodes took 10 s, 16,000 about 3 minutes (quadratic). Now a second or so
    (bound: 20 s, for a loaded machine)."""
    started = time.monotonic()
    result = compile_canvas(chain(16_000), build_registry(), CompileLimits.unlimited())
    elapsed = time.monotonic() - started
    assert result.ok, [str(i) for i in result.errors[:3]]
    assert elapsed < 20, f"the 16,000-node chain took {elapsed:.1f} s to compile"


def test_ancestor_bitsets_agree_with_a_search_of_the_graph():
    """Random graphs with cycles and self-loops: upstream means a path of edges, exactly."""
    rng = random.Random(30)
    for _ in range(200):
        nodes = [f"v{i}" for i in range(rng.randint(1, 25))]
        successors: dict[str, list[str]] = defaultdict(list)
        predecessors: dict[str, list[str]] = defaultdict(list)
        for _ in range(rng.randint(0, 50)):
            a, b = rng.choice(nodes), rng.choice(nodes)
            successors[a].append(b)
            predecessors[b].append(a)
        graph = analyse_scope(nodes, successors)
        ancestry = Ancestry(nodes, predecessors, graph.levels, graph.component)
        for source in nodes:
            reached, stack = set(), [source]
            while stack:
                for nxt in successors[stack.pop()]:
                    if nxt not in reached:
                        reached.add(nxt)
                        stack.append(nxt)
            for target in nodes:
                assert ancestry.is_upstream(source, target) == (target in reached), (source, target)


def test_a_canvas_over_the_node_cap_is_refused_before_any_work():
    started = time.monotonic()
    result = compile_canvas(chain(16_000), build_registry())
    assert time.monotonic() - started < 5
    [issue] = result.issues
    assert (issue.code, issue.field) == ("too_many_nodes", "nodes")
    assert "16001 nodes" in issue.message and "at most 5000" in issue.message


def test_a_canvas_at_the_caps_compiles_in_seconds():
    started = time.monotonic()
    result = compile_canvas(chain(4_999), build_registry())
    elapsed = time.monotonic() - started
    assert result.ok and len(result.plan.nodes) == 5_000
    assert elapsed < 30, f"a canvas at the node cap took {elapsed:.1f} s"


def test_the_time_budget_stops_a_compile_with_an_issue():
    result = compile_canvas(chain(4_999), build_registry(), CompileLimits(time_budget_s=1e-9))
    assert not result.ok
    assert result.issues[-1].code == "compile_time_exceeded"


def test_5000_nested_parentheses_are_an_issue_naming_node_and_field():
    raw = {
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "deep", "type": "transform", "data": {"output": DEEP_TEMPLATE}},
        ],
        "edges": [{"source": "start", "target": "deep"}],
    }
    [issue] = compile_canvas(raw, build_registry()).errors
    assert (issue.code, issue.node_id, issue.field) == ("template_too_deep", "deep", "data.output")
    assert "5000 brackets" in issue.message


def test_nesting_the_parser_would_recurse_on_without_brackets_is_an_issue():
    inline_ifs = "{{ " + "1 if 1 else " * 3000 + "0 }}"
    raw = {
        "nodes": [{"id": "start", "type": "start"}, {"id": "ifs", "type": "transform", "data": {"output": inline_ifs}}],
        "edges": [{"source": "start", "target": "ifs"}],
    }
    [issue] = compile_canvas(raw, build_registry()).errors
    assert (issue.code, issue.node_id, issue.field) == ("template_too_deep", "ifs", "data.output")


def test_deployment_names_never_hold_what_prefect_refuses():
    from prefect.types.names import BANNED_CHARACTERS

    name = deployment_name("0123456789", "R&D <report> 50% a/b ?x#y")
    assert not set(name) & (set(BANNED_CHARACTERS) | {"?", "#"}), name
    assert deployment_name("0123456789", "hello (v2)") == "hello (v2) [01234567]"  # unchanged when safe


@pytest.mark.parametrize(
    "timing, field",
    [
        (Timing(rrule="FREQ=SECONDLY"), "rrule"),
        (Timing(rrule="FREQ=SECONDLY;INTERVAL=30"), "rrule"),
        (Timing(rrule="FREQ=MINUTELY;BYSECOND=0,5"), "rrule"),
        (
            Timing(rrule="DTSTART:20200101T000000Z\nRRULE:FREQ=MINUTELY;BYSECOND=0\nRRULE:FREQ=MINUTELY;BYSECOND=1"),
            "rrule",
        ),
        (Timing(cron="* * * * * *"), "cron"),
        (Timing(cron="* * * * * */2"), "cron"),
    ],
)
async def test_schedules_closer_than_10_s_are_refused(timing, field):
    with pytest.raises(Invalid) as caught:
        await refuse_short_gaps(timing)
    [issue] = caught.value.issues
    assert (issue["code"], issue["field"]) == ("invalid_schedule", field)


@pytest.mark.parametrize(
    "timing",
    [
        Timing(cron="*/5 * * * *"),
        Timing(cron="* * * * * 0"),
        Timing(cron="* * * * * */15"),
        Timing(rrule="FREQ=MINUTELY;BYSECOND=0,30"),
        Timing(rrule="FREQ=HOURLY"),
    ],
)
async def test_schedules_10_s_apart_or_more_are_accepted(timing):
    await refuse_short_gaps(timing)


# --------------------------------------------------------------------------- a real API process


def _client(served) -> httpx.Client:
    return httpx.Client(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.owner_key}", "content-type": "application/json"},
        timeout=300,
    )


def _health_while(served, request) -> tuple[httpx.Response, list[float]]:
    """``request()`` in a thread while /health of the same process is asked every 50 ms;
    its answer and the latencies of /health meanwhile."""
    answer: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: answer.append(request()))
    latencies = []
    with httpx.Client(base_url=served.base, timeout=120) as probe:
        worker.start()
        while worker.is_alive():
            started = time.monotonic()
            assert probe.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
            worker.join(0.05)
    worker.join()
    return answer[0], latencies


def _serve_log(served) -> str:
    return "".join(path.read_text(errors="replace") for path in served.home.glob("serve-*.log"))


@pytest.mark.prefect
def test_the_16000_chain_is_refused_at_once_and_health_keeps_answering(served):
    with _client(served) as api:
        body = compact({"canvas": chain(16_000)})
        assert len(body) < 2_000_000  # under the request size limit: the compiler is what refuses it
        started = time.monotonic()
        answer, latencies = _health_while(served, lambda: api.post("/api/workflows/validate", content=body))
        assert time.monotonic() - started < 30
        assert answer.status_code == 413, answer.text
        [issue] = answer.json()["issues"]
        assert (issue["code"], issue["field"]) == ("too_many_nodes", "nodes")
        assert max(latencies) < 10, latencies  # before: 55 s


@pytest.mark.prefect
def test_a_canvas_at_the_cap_compiles_off_the_event_loop(served):
    """5,000 nodes (the cap): validate compiles it, /health answers meanwhile (within 10 s; before: 55 s)."""
    with _client(served) as api:
        body = compact({"canvas": chain(4_999)})
        answer, latencies = _health_while(served, lambda: api.post("/api/workflows/validate", content=body))
        assert answer.status_code == 200 and answer.json()["valid"] is True, answer.text[:500]
        assert latencies and max(latencies) < 10, latencies


def _compiles(api: httpx.Client, metrics_key: str) -> float:
    answer = api.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"})
    answer.raise_for_status()
    text = answer.text
    return float(re.search(r"^flowmaestro_canvas_compiles_total (\S+)$", text, re.M).group(1))


@pytest.mark.prefect
def test_a_saved_version_is_not_compiled_again_to_run(served):
    with _client(served) as api:
        saved = api.post("/api/workflows", content=compact({"canvas": chain(50, name="cached plan")}))
        assert saved.status_code == 201, saved.text
        before = _compiles(api, served.metrics_key)
        for _ in range(2):
            started = api.post(f"/api/workflows/{saved.json()['id']}/execute", json={})
            assert started.status_code == 202, started.text
        api.get(f"/api/workflows/{saved.json()['id']}/schedules").raise_for_status()
        assert _compiles(api, served.metrics_key) == before
        api.delete(f"/api/workflows/{saved.json()['id']}")


@pytest.mark.prefect
def test_5000_nested_parentheses_answer_422_without_a_traceback(served):
    canvas = {
        "name": "deep template",
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "deep", "type": "transform", "data": {"output": DEEP_TEMPLATE}},
        ],
        "edges": [{"source": "start", "target": "deep"}],
    }
    log_before = len(_serve_log(served))
    with _client(served) as api:
        answer = api.post("/api/workflows", content=compact({"canvas": canvas}))
        assert answer.status_code == 422, answer.text
        assert [(i["code"], i["node_id"], i["field"]) for i in answer.json()["issues"]] == [
            ("template_too_deep", "deep", "data.output")
        ]
        report = api.post("/api/workflows/validate", content=compact({"canvas": canvas}))
        assert report.status_code == 200 and report.json()["valid"] is False
    new_lines = _serve_log(served)[log_before:]
    assert "Traceback" not in new_lines and "RecursionError" not in new_lines


@pytest.mark.prefect
def test_schedules_under_10_s_answer_422_naming_the_field(served):
    with _client(served) as api:
        saved = api.post("/api/workflows", content=compact({"canvas": chain(2, name="short schedules")}))
        assert saved.status_code == 201, saved.text
        path = f"/api/workflows/{saved.json()['id']}/schedules"
        for body, field in (({"rrule": "FREQ=SECONDLY"}, "rrule"), ({"cron": "* * * * * *"}, "cron")):
            answer = api.post(path, json=body)
            assert answer.status_code == 422, answer.text
            assert [i["field"] for i in answer.json()["issues"]] == [field]
        assert api.get(path).json() == []
        api.delete(f"/api/workflows/{saved.json()['id']}")


@pytest.mark.prefect
def test_a_workflow_named_with_characters_prefect_refuses_saves_and_runs(served):
    name = f"R&D <report> {time.time_ns()}"
    with _client(served) as api:
        saved = api.post("/api/workflows", content=compact({"canvas": chain(2, name=name)}))
        assert saved.status_code == 201, saved.text
        assert saved.json()["name"] == name and not saved.json()["warnings"]
        started = api.post(f"/api/workflows/{saved.json()['id']}/execute", json={})
        assert started.status_code == 202, started.text
        client = httpx.AsyncClient(
            base_url=served.base, headers={"Authorization": f"Bearer {served.owner_key}"}, timeout=60
        )
        result = asyncio.run(_final(client, started.json()["execution_id"]))
        assert result["status"] == "completed", result
        assert result["workflow"] == name
        assert api.delete(f"/api/workflows/{saved.json()['id']}").status_code == 204
        again = api.post("/api/workflows", content=compact({"canvas": chain(2, name=name)}))
        assert again.status_code == 201, again.text  # the name is free once deleted
        api.delete(f"/api/workflows/{again.json()['id']}")


async def _final(client: httpx.AsyncClient, execution_id: str) -> dict:
    async with client:
        return await wait_final(client, execution_id, timeout=180)
