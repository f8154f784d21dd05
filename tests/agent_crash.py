"""The agent crash harness: an agent whose model calls an http tool three times, one call per
turn, then answers; its worker's process group SIGKILLed while the third call is in flight,
a fresh worker started; what the run then did, measured against an uncrashed run of the same
agent. Used by tests/test_agent_durability.py (one trial) and benchmarks/agent_crash.py
(many)."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.agent_server import Call, Say, ToolModel, ToolServer
from tests.support import eventually as until
from tests.support import execute, wait_final

MODEL = "crash-agent"
SCRIPT = [Call((("book", {"n": 1}),)), Call((("book", {"n": 2}),)), Call((("book", {"n": 3}),)), Say(("Booked ", "3."))]
CALL_3_DELAY_S = 4.0
"""How long the tool server takes to answer the third call: the worker is killed meanwhile."""


def agent_crash_canvas(name: str, model: ToolModel, tools: ToolServer) -> dict[str, Any]:
    tool = {
        "type": "http",
        "name": "book",
        "description": "Books item n.",
        "method": "POST",
        "url": tools.url + "/book/{{ args.n }}?delay={{ " + str(CALL_3_DELAY_S) + " if args.n == 3 else 0.1 }}",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
    }
    agent = {
        "id": "agent",
        "type": "agent",
        "data": {"model": MODEL, "base_url": model.base_url, "prompt": "{{ inputs.q }}", "tools": [tool]},
    }
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        agent,
        {"id": "end", "type": "end", "data": {"output": "{{ agent }}"}},
    ]
    edges = [{"id": "e0", "source": "start", "target": "agent"}, {"id": "e1", "source": "agent", "target": "end"}]
    return {"name": name, "inputs": {"q": {"type": "string", "required": True}}, "nodes": nodes, "edges": edges}


def comparable(output: dict[str, Any]) -> dict[str, Any]:
    """An agent's output without how long its tool calls took."""
    return {**output, "tool_calls": [{**c, "duration_ms": None} for c in output.get("tool_calls", [])]}


async def uncrashed_output(http: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    run_id = await execute(http, workflow_id, {"q": "Book three things."})
    result = await wait_final(http, run_id, timeout=240)
    assert result["status"] == "completed", result
    output: dict[str, Any] = result["output"]
    return output


async def one_agent_crash_trial(
    http: httpx.AsyncClient, workers: Any, victim: Any, model: ToolModel, tools: ToolServer, workflow_id: str
) -> dict[str, Any]:
    """Start a run, SIGKILL its worker while the third tool call is in flight, start a fresh
    worker, and gather what the run did."""
    already = len(model.requests)
    run_id = await execute(http, workflow_id, {"q": "Book three things."})

    async def third_call_sent() -> bool:
        return any(r["path"] == "/book/3" for r in tools.of_run(run_id))

    await until(third_call_sent, timeout=180, what=f"the third tool call of run {run_id}")
    killed_at = time.time()
    victim.kill()
    fresh = workers.start()
    try:
        result = await wait_final(http, run_id, timeout=240)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nfresh worker: {fresh.output()}") from None
    requests = tools.of_run(run_id)
    third = [r for r in requests if r["path"] == "/book/3"]
    return {
        "run_id": run_id,
        "result": result,
        "turns": [r.turn for r in model.requests[already:] if r.model == MODEL],
        "calls": [r["path"] for r in requests],
        "keys_of_call_3": [r["key"] for r in third],
        "fresh": fresh,
        "continued_s": (third[-1]["at"] - killed_at) if len(third) > 1 else None,
        "ended_s": time.time() - killed_at,
    }


def problems_of(outcome: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What went wrong in one trial (nothing, when the run was continued as promised)."""
    problems = []
    result = outcome["result"]
    if result.get("status") != "completed":
        problems.append(f"ended {result.get('status')}: {result.get('error')}")
    elif comparable(result["output"]) != comparable(reference):
        problems.append(f"output {result['output']} is not the uncrashed run's {reference}")
    turns = outcome["turns"]
    for turn in (1, 2, 3):
        if turns.count(turn) != 1:
            problems.append(f"turn {turn} was requested {turns.count(turn)} times: {turns}")
    calls = outcome["calls"]
    for path in ("/book/1", "/book/2"):
        if calls.count(path) != 1:
            problems.append(f"{path} reached its server {calls.count(path)} times: {calls}")
    keys = outcome["keys_of_call_3"]
    if not 1 <= len(keys) <= 2 or len(set(keys)) != 1:
        problems.append(f"the third call was sent with the keys {keys} (1 or 2 times, one key)")
    elif not keys[0].endswith(":agent::call_3_0"):
        problems.append(f"the third call's key {keys[0]} is not <run>:agent::<call id>")
    return problems
