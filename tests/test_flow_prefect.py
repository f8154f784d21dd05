"""The generic flow on a real Prefect server: task runs, retries, caching, errors,
cancellation and concurrency as Prefect records them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from flows.flow import run_workflow, workflow_flow
from flows.prefect_compat import request_cancellation
from tests.support import JOURNAL, canvas, node, task_runs_of

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server", "test_handlers")]


async def execute(raw, inputs=None, flow=run_workflow):
    """Run through the deployment entry point (context from the environment) unless given a
    flow bound to a context."""
    state = await flow(canvas=raw, inputs=inputs or {}, return_state=True)
    return state, await state.result(raise_on_failure=False)


def listening(context, listener):
    """The generic flow bound to ``context`` with ``listener`` called for every run."""
    return workflow_flow(dataclasses.replace(context, listeners=(listener,)))


async def test_a_run_completes_and_every_node_is_a_task_run_tagged_with_its_id():
    raw = canvas(
        [
            node("start", "start"),
            node("greet", data={"output": "hi {{ inputs.who }}"}),
            node("wait", "test_sleep", data={"seconds": 0.05}),
            node("end", "end", data={"output": "{{ greet }}"}),
        ],
        [("start", "greet"), ("greet", "wait"), ("wait", "end")],
        name="greeter",
    )
    state, result = await execute(raw, {"who": "Ada"})
    assert state.is_completed()
    assert result["status"] == "completed" and result["output"] == "hi Ada"
    assert result["id"] == str(state.state_details.flow_run_id)
    runs = await task_runs_of(result["id"], 4)
    tags = sorted(t for r in runs for t in r.tags if t.startswith("node:"))
    assert tags == ["node:end", "node:greet", "node:start", "node:wait"]
    assert {r.name for r in runs} == {"start", "greet", "wait", "end"}
    async with get_client() as client:
        flow_run = await client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.name == "greeter"


async def test_retries_are_prefect_retries_with_attempts_reported(run_context):
    raw = canvas(
        [
            node(
                "flaky",
                "test_flaky",
                data={"failures": 2},
                retry={"max_attempts": 3, "initial_delay_s": 0.2, "backoff_factor": 2},
            )
        ]
    )
    events = []
    state, result = await execute(raw, flow=listening(run_context, lambda bus: bus.subscribe(events.append)))
    assert result["nodes"]["flaky"]["status"] == "completed"
    assert result["nodes"]["flaky"]["attempts"] == 3
    assert [e.data["attempt"] for e in events if e.type == "node:retrying"] == [1, 2]
    runs = await task_runs_of(result["id"], 1)
    assert runs[0].run_count == 3
    # Backoff observed: attempts 2 and 3 came at least 0.2 s and 0.4 s after the one before.
    assert runs[0].total_run_time is not None
    started, ended = result["nodes"]["flaky"]["started_at"], result["nodes"]["flaky"]["ended_at"]
    from datetime import datetime

    assert (datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds() >= 0.6


async def test_cache_hit_in_a_second_run_skips_the_handler():
    marker = uuid.uuid4().hex  # a fresh key for this test session

    def build(value):
        return canvas(
            [
                node("start", "start"),
                node(
                    "count",
                    "test_count",
                    data={"value": "{{ inputs.v }}-" + marker},
                    cache={"enabled": True, "ttl_s": 600},
                ),
            ],
            [("start", "count")],
            inputs={"v": {"type": "string"}},
        )

    _, first = await execute(build(1), {"v": "a"})
    _, second = await execute(build(1), {"v": "a"})
    _, third = await execute(build(1), {"v": "b"})
    assert first["nodes"]["count"]["status"] == "completed"
    assert second["nodes"]["count"]["status"] == "cached"
    assert second["nodes"]["count"]["cached"] is True
    assert second["nodes"]["count"]["output"] == first["nodes"]["count"]["output"]
    assert third["nodes"]["count"]["status"] == "completed"
    assert [c[0] for c in JOURNAL.calls] == ["count", "count"]  # first and third run only


async def test_fail_fast_ends_the_prefect_run_failed_with_the_result_attached():
    raw = canvas(
        [
            node("boom", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("slow", "test_sleep", data={"seconds": 30}),
        ]
    )
    state, result = await execute(raw)
    assert state.is_failed()
    assert result["status"] == "failed"
    assert result["error"]["node_id"] == "boom"
    assert result["nodes"]["slow"]["status"] == "cancelled"
    assert "boom" in state.message


async def test_continue_runs_the_other_branches():
    raw = canvas(
        [
            node("boom", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("after_boom"),
            node("fine", "test_sleep", data={"seconds": 0.05}),
            node("after_fine"),
        ],
        [("boom", "after_boom"), ("fine", "after_fine")],
        settings={"on_error": "continue"},
    )
    state, result = await execute(raw)
    assert state.is_failed()
    assert result["nodes"]["after_fine"]["status"] == "completed"
    assert result["nodes"]["after_boom"]["status"] == "skipped"


async def test_node_timeout_fails_the_node():
    raw = canvas([node("slow", "test_sleep", data={"seconds": 10}, timeout_s=0.5)])
    _, result = await execute(raw)
    assert result["nodes"]["slow"]["status"] == "failed"
    assert result["nodes"]["slow"]["error"]["type"] == "Timeout"


async def test_parallel_nodes_overlap_as_task_runs():
    raw = canvas([node("a", "test_sleep", data={"seconds": 0.5}), node("b", "test_sleep", data={"seconds": 0.5})])
    await execute(raw)
    (a_start, a_end), (b_start, b_end) = JOURNAL.spans[("a", ())], JOURNAL.spans[("b", ())]
    assert a_start < b_end and b_start < a_end


async def test_invalid_inputs_fail_before_anything_runs():
    raw = canvas(
        [node("start", "start"), node("count", "test_count")],
        [("start", "count")],
        inputs={"n": {"type": "integer", "required": True}},
    )
    state, result = await execute(raw, {"n": "three"})
    assert state.is_failed()
    assert "input 'n' must be an integer" in result["error"]["message"]
    assert JOURNAL.calls == []


async def test_cancelling_in_prefect_ends_the_run_cancelled(run_context):
    raw = canvas([node("slow", "test_sleep", data={"seconds": 60}), node("after")], [("slow", "after")])
    started = asyncio.Event()
    run_ids = []

    def listener(bus):
        run_ids.append(bus.execution_id)
        bus.subscribe(lambda event: started.set() if event.type == "node:started" else None)

    running = asyncio.create_task(execute(raw, flow=listening(run_context, listener)))
    await asyncio.wait_for(started.wait(), 30)
    async with get_client() as client:
        await request_cancellation(client, run_ids[0])  # what the API's cancel does
    state, result = await asyncio.wait_for(running, 60)
    assert state.type == StateType.CANCELLED
    assert result["status"] == "cancelled"
    assert result["nodes"]["slow"]["status"] == "cancelled"
    assert result["nodes"]["after"]["status"] != "completed"


async def test_subworkflow_runs_a_child_canvas_as_a_subflow(tmp_path, monkeypatch):
    child = canvas(
        [
            node("start", "start"),
            node("twice", data={"output": "{{ inputs.n * 2 }}"}),
            node("end", "end", data={"output": "{{ twice }}"}),
        ],
        [("start", "twice"), ("twice", "end")],
        name="child",
        inputs={"n": {"type": "integer", "required": True}},
    )
    (tmp_path / "child.json").write_text(json.dumps(child))
    monkeypatch.chdir(tmp_path)
    parent = canvas(
        [
            node("call", "subworkflow", data={"workflow": "child.json", "inputs": {"n": 21}}),
            node("use", data={"output": "{{ call + 1 }}"}),
            node("broken", "subworkflow", data={"workflow": "missing.json"}),
            node("fallback"),
        ],
        [("call", "use"), ("broken", "fallback", "error")],
    )
    state, result = await execute(parent)
    assert result["nodes"]["call"]["output"] == 42
    assert result["nodes"]["use"]["output"] == 43
    assert result["nodes"]["broken"]["error"]["type"] == "SubworkflowNotFound"
    assert result["nodes"]["fallback"]["status"] == "completed"
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    parent_id = result["id"]
    async with get_client() as client:  # the parent's children, not the session's latest runs
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(parent_id)]))
        )
    assert any(run.parent_task_run_id is not None and run.name == "child" for run in children), parent_id


async def test_a_subworkflow_is_resolved_for_the_runs_owner_through_its_context(run_context):
    """The owner is a flow parameter handed to the context's resolver, for nested children too;
    the context's listeners see the parent and every child run."""
    child = canvas(
        [node("start", "start"), node("end", "end", data={"output": "{{ inputs.n + 1 }}"})],
        [("start", "end")],
        name="owned-child",
        inputs={"n": {"type": "integer", "required": True}},
    )
    middle = canvas(
        [
            node("start", "start"),
            node("inner", "subworkflow", data={"workflow": "child", "inputs": {"n": 1}}),
            node("end", "end", data={"output": "{{ inner }}"}),
        ],
        [("start", "inner"), ("inner", "end")],
        name="owned-middle",
    )
    asked = []

    async def resolver(reference, version, parent_run_id, owner):
        asked.append((reference, owner, parent_run_id))
        return {"middle": middle, "child": child}[reference]

    runs = []
    context = dataclasses.replace(
        run_context, resolve_workflow=resolver, listeners=(lambda bus: runs.append(bus.execution_id),)
    )
    parent = canvas([node("call", "subworkflow", data={"workflow": "middle"})], [])
    state = await workflow_flow(context)(canvas=parent, inputs={}, owner="ada", return_state=True)
    result = await state.result(raise_on_failure=False)
    assert result["status"] == "completed", result["error"]
    assert result["nodes"]["call"]["output"] == 2
    assert [(reference, owner) for reference, owner, _ in asked] == [("middle", "ada"), ("child", "ada")]
    assert asked[0][2] == result["id"] and len(set(runs)) == 3 and runs[0] == result["id"]
    async with get_client() as client:
        child_run = await client.read_flow_run(uuid.UUID(asked[1][2]))
    assert child_run.parameters["owner"] == "ada"
