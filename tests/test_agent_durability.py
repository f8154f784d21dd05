"""The agent node on real workers: its worker SIGKILLed during the third tool call and a fresh
worker continuing the loop after its last completed step (tests/agent_crash.py), and a saved
workflow as a tool, run as a child run.

The stack: the session's Prefect server on PostgreSQL, the API (`flowmaestro serve --workers
0`) and worker processes, crash detection shortened to 15 s; the model and tool servers run
in this process (tests/agent_server.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent_crash import agent_crash_canvas, one_agent_crash_trial, problems_of, uncrashed_output
from tests.agent_server import Call, Say, ToolModel, ToolServer, tool_model, tool_server
from tests.crash_harness import KEY, client, save
from tests.processes import postgres_database, stack_env, start_serve
from tests.support import execute, wait_execution, wait_final
from tests.test_durability import Workers

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
CRASH_DETECT_S = 15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_prefect: Any) -> Iterator[tuple[Any, dict[str, str]]]:
    home = tmp_path_factory.mktemp("agent-stack")
    with postgres_database("fm_agent") as database_url:
        yield home, stack_env(home, pg_prefect, database_url, KEY, FLOWMAESTRO_CRASH_DETECT_S=str(CRASH_DETECT_S))


@pytest.fixture(scope="module")
def api(stack: tuple[Any, dict[str, str]]) -> Iterator[str]:
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop()


@pytest.fixture
def workers(stack: tuple[Any, dict[str, str]], api: str) -> Iterator[Workers]:
    started = Workers(*stack)
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def model() -> Iterator[ToolModel]:
    with tool_model() as server:
        yield server


@pytest.fixture(scope="module")
def tools() -> Iterator[ToolServer]:
    with tool_server() as server:
        yield server


async def test_an_agent_whose_worker_dies_during_its_third_tool_call_continues_after_its_last_step(
    api: str, workers: Workers, model: ToolModel, tools: ToolServer
) -> None:
    from tests.agent_crash import MODEL, SCRIPT

    model.script(MODEL, *SCRIPT)
    victim = workers.start()
    async with client(api) as http:
        workflow_id = await save(http, agent_crash_canvas(f"agent-crash-{uuid.uuid4().hex[:6]}", model, tools))
        reference = await uncrashed_output(http, workflow_id)
        assert reference["turns"] == 4 and [c["arguments"]["n"] for c in reference["tool_calls"]] == [1, 2, 3]
        outcome = await one_agent_crash_trial(http, workers, victim, model, tools, workflow_id)
    print(f"agent crash: turns {outcome['turns']}, calls {outcome['calls']}, ended {outcome['ended_s']:.1f} s after")
    assert problems_of(outcome, reference) == []


async def test_a_saved_workflow_is_a_tool_whose_parameters_are_its_declared_inputs(
    api: str, workers: Workers, model: ToolModel
) -> None:
    workers.start()
    tag = uuid.uuid4().hex[:6]
    child = {
        "name": f"lookup-{tag}",
        "inputs": {
            "order_id": {"type": "string", "required": True, "description": "The order's id"},
            "verbose": {"type": "boolean", "default": False},
        },
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "end", "type": "end", "data": {"output": {"order": "{{ inputs.order_id }}", "status": "shipped"}}},
        ],
        "edges": [{"id": "e0", "source": "start", "target": "end"}],
    }
    name = model.script(f"wf-{tag}", Call((("lookup_order", {"order_id": "A-1"}),)), Say(("Shipped.",)))
    async with client(api) as http:
        child_id = await save(http, child)
        tool = {"type": "workflow", "workflow": child_id, "name": "lookup_order", "description": "Finds an order"}
        parent = {
            "name": f"support-{tag}",
            "nodes": [
                {"id": "start", "type": "start", "data": {}},
                {
                    "id": "agent",
                    "type": "agent",
                    "data": {"model": name, "base_url": model.base_url, "prompt": "Where is A-1?", "tools": [tool]},
                },
                {"id": "end", "type": "end", "data": {"output": "{{ agent }}"}},
            ],
            "edges": [
                {"id": "e0", "source": "start", "target": "agent"},
                {"id": "e1", "source": "agent", "target": "end"},
            ],
        }
        run_id = await execute(http, await save(http, parent))
        result = await wait_final(http, run_id, timeout=240)

    assert result["status"] == "completed", result
    [call] = result["output"]["tool_calls"]
    assert call["result"] == {"order": "A-1", "status": "shipped"} and call["error"] is None
    first = next(r.body for r in model.requests if r.model == name)
    assert first["tools"][0]["function"] == {
        "name": "lookup_order",
        "description": "Finds an order",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "description": "The order's id"},
                "verbose": {"type": "boolean"},
            },
            "required": ["order_id"],
            "additionalProperties": False,
        },
    }
    assert result["output"]["text"] == "Shipped."


async def test_tool_calls_wait_for_approval_edited_and_rejected_answers_reach_the_model(
    api: str, workers: Workers, model: ToolModel, tools: ToolServer
) -> None:
    workers.start()
    tag = uuid.uuid4().hex[:6]
    name = model.script(
        f"approve-{tag}",
        Call((("refund", {"order": "A-1", "amount": 50}),)),
        Call((("refund", {"order": "B-2", "amount": 900}),)),
        Say(("One refund done.",)),
    )
    refund = {
        "type": "http",
        "name": "refund",
        "method": "POST",
        "url": tools.url + f"/refund-{tag}/{{{{ args.order }}}}/{{{{ args.amount }}}}",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}, "amount": {"type": "number"}}},
    }
    data = {
        "model": name,
        "base_url": model.base_url,
        "prompt": "Refund both.",
        "tools": [refund],
        "require_approval": ["refund"],
    }
    raw = {
        "name": f"refunds-{tag}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "agent", "type": "agent", "data": data},
            {"id": "end", "type": "end", "data": {"output": "{{ agent }}"}},
        ],
        "edges": [{"id": "e0", "source": "start", "target": "agent"}, {"id": "e1", "source": "agent", "target": "end"}],
    }

    def pending_call(order: str):
        def check(body: dict[str, Any]) -> Any:
            found = [p for p in body.get("pending_approvals") or [] if p.get("arguments", {}).get("order") == order]
            return body["status"] == "paused" and found

        return check

    async with client(api) as http:
        run_id = await execute(http, await save(http, raw))
        body = await wait_execution(http, run_id, pending_call("A-1"), timeout=180, what="the first refund's approval")
        [pending] = body["pending_approvals"]
        assert (pending["node_id"], pending["kind"], pending["tool"]) == ("agent", "tool_call", "refund")
        assert pending["arguments"] == {"order": "A-1", "amount": 50}
        assert [r for r in tools.requests if f"/refund-{tag}/" in r["path"]] == []  # nothing sent before the decision
        edited = {"node_id": "agent", "input": {"approved": True, "arguments": {"order": "A-1", "amount": 20}}}
        assert (await http.post(f"/api/executions/{run_id}/resume", json=edited)).status_code == 200

        await wait_execution(http, run_id, pending_call("B-2"), timeout=180, what="the second refund's approval")
        rejected = {"node_id": "agent", "input": {"approved": False, "message": "too large"}}
        assert (await http.post(f"/api/executions/{run_id}/resume", json=rejected)).status_code == 200
        result = await wait_final(http, run_id, timeout=180)

    assert result["status"] == "completed", result
    assert [r["path"] for r in tools.requests if f"/refund-{tag}/" in r["path"]] == [f"/refund-{tag}/A-1/20"]
    first, second = result["output"]["tool_calls"]
    assert first["arguments"] == {"order": "A-1", "amount": 20} and first["error"] is None
    assert second["error"] == "a person refused this call: too large" and second["result"] is None
    told = [m for m in model.requests[-1].body["messages"] if m["role"] == "tool"]
    assert told[-1]["content"] == "Error: a person refused this call: too large"
