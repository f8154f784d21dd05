"""Sub-workflow nesting limits, without Prefect: the depth limit is checked before a child
run is created."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flows.subworkflows import PrefectSubworkflows
from node_handlers.base import NodeError


async def test_a_child_deeper_than_the_limit_is_refused_before_it_starts():
    calls = []

    async def child_flow(**kwargs):
        calls.append(kwargs)
        raise AssertionError("no child run may start")

    async def resolver(reference, version, parent_run_id, owner):
        return {"name": "child", "nodes": [], "edges": []}

    subworkflows = PrefectSubworkflows(resolver, child_flow, "alice", depth=3, max_depth=3)
    execution = SimpleNamespace(record=SimpleNamespace(id="run-1"))
    config = SimpleNamespace(workflow="wf-1", version=None, inputs={})
    with pytest.raises(NodeError) as raised:
        await subworkflows.run(execution, SimpleNamespace(id="call"), config)
    assert raised.value.error_type == "SubworkflowTooDeep" and "at most 3 deep" in str(raised.value)
    assert calls == []


async def test_a_child_within_the_limit_is_called_one_level_deeper():
    calls = []

    from prefect.results import ResultRecord, ResultRecordMetadata

    class State:  # the child's final state as its engine holds it in memory
        state_details = SimpleNamespace(flow_run_id="child-run")
        data = ResultRecord(metadata=ResultRecordMetadata(), result={"status": "completed", "output": "done"})

    async def child_flow(**kwargs):
        calls.append(kwargs)
        return State()

    async def resolver(reference, version, parent_run_id, owner):
        raise AssertionError("a child by reference loads its own canvas")

    subworkflows = PrefectSubworkflows(resolver, child_flow, "alice", by_reference=True, depth=2, max_depth=3)
    execution = SimpleNamespace(record=SimpleNamespace(id="run-1"))
    completed = await subworkflows.run(
        execution,
        SimpleNamespace(id="call"),
        SimpleNamespace(workflow="wf-1", version=4, inputs={"x": 1}),
        journal="run-1:call:",
    )
    assert completed.output == "done"
    assert calls == [
        {
            "canvas": None,
            "inputs": {"x": 1},
            "workflow_id": "wf-1",
            "version": 4,
            "owner": "alice",
            "depth": 3,
            "journal": "run-1:call:",
            "return_state": True,
        }
    ]
