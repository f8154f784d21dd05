"""A worker stopped with SIGTERM hands its runs back (issue 31, major 7).

Real processes: the API (`flowmaestro serve --workers 0`), `flowmaestro worker` processes
with a short grace period, the session's Prefect server on PostgreSQL, the local counting
HTTP server. A run with a request in flight and a run paused on an approval (held in the
worker's memory) are on the worker when it gets SIGTERM; when the grace ends both go back
to Scheduled, the worker exits without a traceback, and another worker continues both from
their journals. Twice in a row, on the same installation.
"""

from __future__ import annotations

import asyncio
import signal
import uuid

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType

from tests.crash_harness import http_node
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.support import eventually, prefect_flow_run_id, save, wait_execution, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "drain-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GRACE_S = 1
UNWANTED = ("Traceback", "TerminationSignal", "Task was destroyed", "aclose()", "Flow run crashed")
"""What the worker's output showed before (the in-flight node's task run is still recorded
Crashed in Prefect by its engine: that is the node's attempt, not the run)."""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    home = tmp_path_factory.mktemp("drain")
    with postgres_database("fm_drain") as database_url:
        yield home, stack_env(home, pg_prefect, database_url, KEY, FLOWMAESTRO_WORKER_GRACE_S=str(GRACE_S))


@pytest.fixture(scope="module")
def api(stack):
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop()


def chain(name: str, *nodes: dict) -> dict:
    ids = ["start", *(n["id"] for n in nodes)]
    return {
        "name": name,
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": [{"id": "start", "type": "start", "data": {}}, *nodes],
        "edges": [
            {"id": f"e{i}", "source": a, "target": b} | ({"sourceHandle": "approved"} if a == "ask" else {})
            for i, (a, b) in enumerate(zip(ids, ids[1:]))
        ],
    }


async def prefect_state(api_url: str, run_id: str) -> StateType | None:
    async with PrefectClient(api_url) as client:
        state = (await client.read_flow_run(uuid.UUID(await prefect_flow_run_id(run_id, api_url)))).state
    return state.type if state else None


async def test_sigterm_hands_running_and_paused_runs_back_twice_without_a_traceback(stack, api, counting, pg_prefect):
    home, env = stack
    worker = start_worker(home, env, name=f"drain-0-{uuid.uuid4().hex[:4]}")
    async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=60) as http:
        for round_ in range(2):
            tag = uuid.uuid4().hex[:6]
            busy = await save(
                http,
                chain(
                    f"drain-busy-{tag}",
                    http_node("a", f"/d{tag}/a", delay=0),
                    http_node("b", f"/d{tag}/b", delay=6),
                    {"id": "end", "type": "end", "data": {"output": "{{ b.body.count }}"}},
                ),
            )
            held = await save(
                http,
                chain(
                    f"drain-held-{tag}",
                    http_node("p", f"/d{tag}/p", delay=0),
                    {"id": "ask", "type": "approval", "data": {"message": "ship it?"}},
                    {"id": "ship", "type": "transform", "data": {"output": "shipped"}},
                ),
            )
            inputs = {"inputs": {"base": counting.url}}
            busy_id = (await http.post(f"/api/workflows/{busy['id']}/execute", json=inputs)).json()["execution_id"]
            held_id = (await http.post(f"/api/workflows/{held['id']}/execute", json=inputs)).json()["execution_id"]

            async def in_flight(path: str = f"/d{tag}/b") -> bool:
                return counting.counts[path] == 1

            await eventually(in_flight, timeout=120, what="b's request in flight")
            await wait_execution(
                http, held_id, lambda body: body["status"] == "paused", timeout=120, what="the approval waiting"
            )

            worker.signal_group(signal.SIGTERM)
            assert await asyncio.to_thread(worker.process.wait, 60) == 0, worker.output()
            log = worker.output(200_000)
            assert "handing 2 run(s) back to the work pool" in log, log[-3000:]
            for unwanted in UNWANTED:
                assert unwanted not in log, f"round {round_}: {unwanted!r} in the worker's output:\n{log[-6000:]}"
            # Back in the queue, not ended: nobody takes them until the next worker starts.
            assert await prefect_state(pg_prefect.api_url, busy_id) == StateType.SCHEDULED
            assert await prefect_state(pg_prefect.api_url, held_id) == StateType.SCHEDULED
            assert (await http.get(f"/api/executions/{busy_id}")).json()["status"] == "pending"

            worker = start_worker(home, env, name=f"drain-{round_ + 1}-{uuid.uuid4().hex[:4]}")
            await wait_execution(
                http, held_id, lambda body: body["status"] == "paused", timeout=120, what="paused again"
            )
            resumed = await http.post(
                f"/api/executions/{held_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
            )
            assert resumed.status_code == 200, resumed.text
            busy_result = await wait_final(http, busy_id, timeout=120)
            held_result = await wait_final(http, held_id, timeout=120)
            assert busy_result["status"] == "completed", busy_result
            assert busy_result["output"] == 2, "b's request was in flight: sent again, once"
            assert held_result["status"] == "completed" and held_result["nodes"]["ship"]["output"] == "shipped"
            # Completed nodes were not executed again by the next worker.
            assert (counting.counts[f"/d{tag}/a"], counting.counts[f"/d{tag}/p"]) == (1, 1)
            assert busy_result["nodes"]["a"]["restored"] and held_result["nodes"]["p"]["restored"]
    worker.signal_group(signal.SIGTERM)
    assert await asyncio.to_thread(worker.process.wait, 60) == 0
    assert "Traceback" not in worker.output(200_000)
