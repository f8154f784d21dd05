"""The crash harness: a workflow with HTTP nodes before, inside a loop and a parallel, and
after a delay, run against a local server that records every request with its
Idempotency-Key; the worker's process group SIGKILLed after a random number of requests;
a fresh worker started; what the run then did, measured. Used by tests/test_durability.py
(a few trials) and benchmarks/durability.py (many)."""

from __future__ import annotations

import time
import uuid
from functools import partial

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType

from store.db import make_engine, sessions
from store.queries import NodeOutcomes
from tests.support import eventually as until
from tests.support import execute, prefect_flow_run_id, wait_final
from tests.support import save as save_workflow

KEY = "durability-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
final = partial(wait_final, timeout=240)
NODE_EXECUTIONS = 8
"""Requests of one run of ``crash_canvas``: before, 3 loop steps, 3 parallel hits, after."""


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30)


async def save(http: httpx.AsyncClient, raw: dict) -> str:
    """The saved workflow's id (its deployment may follow at the first run)."""
    return (await save_workflow(http, raw, deployed=False))["id"]


def http_node(node_id: str, path: str, parent: str | None = None, delay: float = 0.4) -> dict:
    found = {
        "id": node_id,
        "type": "http",
        "data": {"method": "POST", "url": f"{{{{ inputs.base }}}}{path}?delay={delay}"},
        "retry": {"max_attempts": 1},
    }
    if parent:
        found["parentId"] = parent
    return found


def crash_canvas(name: str) -> dict:
    """HTTP nodes before, inside a loop and a parallel, and after a delay."""
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        http_node("before", "/before"),
        {"id": "lp", "type": "loop", "data": {"mode": "for", "count": 3}},
        http_node("step", "/loop/{{ loop.index }}", parent="lp"),
        {"id": "par", "type": "parallel", "data": {"mode": "collection", "items": [1, 2, 3]}},
        http_node("hit", "/par/{{ parallel.item }}", parent="par", delay=0.8),
        {"id": "wait", "type": "delay", "data": {"seconds": 3}},
        http_node("after", "/after"),
        {
            "id": "end",
            "type": "end",
            "data": {
                "output": {
                    "before": "{{ before.body.path }}",
                    "loop": "{{ lp.results | length }}",
                    "par": "{{ par.results | length }}",
                    "after": "{{ after.body.path }}",
                }
            },
        },
    ]
    chain = ["start", "before", "lp", "par", "wait", "after", "end"]
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    return {"name": name, "inputs": {"base": {"type": "string", "required": True}}, "nodes": nodes, "edges": edges}


async def journal_of(database_url: str, run_id: str) -> dict:
    engine = make_engine(database_url)
    try:
        return {(o.node_id, o.path): o for o in await NodeOutcomes(sessions(engine)).of_run(run_id)}
    finally:
        await engine.dispose()


async def states_of(prefect_url: str, run_id: str):
    """The states of a run's flow run, oldest first (``run_id``: its execution id, or a flow run id)."""
    flow_run_id = await prefect_flow_run_id(run_id, prefect_url)
    async with PrefectClient(prefect_url) as prefect:
        return sorted(await prefect.read_flow_run_states(uuid.UUID(flow_run_id)), key=lambda s: s.timestamp)


def repeated_completed_nodes(requests: list[dict], journal: dict, run_id: str) -> list[str]:
    """Requests for a node execution that arrived after that execution's completion had been
    written to the journal: a completed node executed again."""
    repeated = []
    for request in requests:
        key = request["key"] or ""
        if not key.startswith(run_id + ":"):
            continue
        _, node_id, path = key.split(":")
        entry = journal.get((node_id, tuple(int(p) for p in path.split(".")) if path else ()))
        if entry is not None and entry.status == "completed" and request["at"] > entry.ended_at.timestamp():
            repeated.append(key)
    return repeated


async def one_crash_trial(http, workers, victim, counting, database_url, prefect_url, workflow_id, rng):
    """Start a run, SIGKILL the worker's process group after a random number of requests
    (nodes in flight), start a fresh worker, and check what the run did."""
    already = len(counting.requests)
    run_id = await execute(http, workflow_id, {"base": counting.url})
    kill_after = rng.randint(1, NODE_EXECUTIONS)  # the last: during the delay or the last node

    async def seen():
        return len([r for r in counting.requests[already:] if (r["key"] or "").startswith(run_id)]) >= kill_after

    await until(seen, timeout=120, what=f"{kill_after} requests of run {run_id}")
    killed_at = time.time()
    victim.kill()
    fresh = workers.start()
    try:
        result = await final(http, run_id, timeout=240)
    except AssertionError as exc:
        history = [(s.timestamp.isoformat(), s.name, s.message) for s in await states_of(prefect_url, run_id)]
        async with httpx.AsyncClient(base_url=prefect_url, timeout=30) as prefect:
            found = (
                await prefect.post(
                    "/events/filter",
                    json={
                        "filter": {
                            "any_resource": {
                                "id": [f"prefect.flow-run.{await prefect_flow_run_id(run_id, prefect_url)}"]
                            }
                        },
                        "limit": 100,
                    },
                )
            ).json()
        events = sorted((e["occurred"], e["event"]) for e in found.get("events", []))
        raise AssertionError(
            f"{exc}\nPrefect states: {history}\nevents: {events}\nkilled at {killed_at}\nfresh worker: {fresh.output()}"
        ) from None
    requests = [r for r in counting.requests[already:] if (r["key"] or "").startswith(run_id)]
    journal = await journal_of(database_url, run_id)
    states = await states_of(prefect_url, run_id)
    crashed = [s for s in states if s.type == StateType.CRASHED]
    resumed = [s for s in states if s.type == StateType.RUNNING and crashed and s.timestamp > crashed[0].timestamp]
    detect_s = crashed[0].timestamp.timestamp() - killed_at if crashed else None
    resume_s = resumed[0].timestamp.timestamp() - crashed[0].timestamp.timestamp() if resumed else None
    return {
        "run_id": run_id,
        "kill_after": kill_after,
        "result": result,
        "requests": requests,
        "journal": journal,
        "crashed": len(crashed),
        "detect_s": detect_s,
        "resume_s": resume_s,
        "repeated": repeated_completed_nodes(requests, journal, run_id),
        "fresh": fresh,
        "states": [(s.timestamp.isoformat(), s.name, s.message) for s in states],
    }


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


EXPECTED_OUTPUT = {"before": "/before", "loop": 3, "par": 3, "after": "/after"}


def problems_of(outcome: dict, detect_limit_s: float) -> list[str]:
    """What went wrong in one trial (nothing, when the run was continued as promised)."""
    problems = []
    result = outcome["result"]
    if result.get("status") != "completed":
        problems.append(f"ended {result.get('status')}: {result.get('error')}")
    elif result.get("output") != EXPECTED_OUTPUT:
        problems.append(f"wrong output {result.get('output')}")
    if outcome["crashed"] != 1:
        problems.append(f"marked Crashed {outcome['crashed']} times: {outcome['states']}")
    if outcome["detect_s"] is not None and outcome["detect_s"] > detect_limit_s:
        problems.append(f"detected after {outcome['detect_s']:.1f} s")
    if outcome["repeated"]:
        problems.append(f"completed nodes executed again: {outcome['repeated']}")
    keys = [r["key"] for r in outcome["requests"]]
    if len(set(keys)) != NODE_EXECUTIONS or (keys and max(keys.count(k) for k in keys) > 2):
        problems.append(f"node executions sent {sorted(keys)}")
    restored = [n for n, r in result.get("nodes", {}).items() if r.get("restored")]
    if outcome["kill_after"] > 1 and "before" not in restored:
        problems.append(f"'before' completed before the kill but was not restored ({restored})")
    return problems
