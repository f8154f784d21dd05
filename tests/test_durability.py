"""Durability with real processes and real signals: a worker SIGKILLed mid-run is detected
and its run continued by a fresh worker without repeating completed nodes; approvals that
outlive the API or their worker; retry from failure through our API and Prefect's (as its
UI's Retry button does it); dead letters; an approval answered once however often the run
executes again.

The stack: a Prefect server on PostgreSQL (several workers), the API (`flowmaestro serve
--workers 0`) and worker processes (`flowmaestro worker`), all separate processes, with
crash detection shortened to 15 s (the default is 90).
"""

from __future__ import annotations

import os
import random
import time
import uuid

import httpx
import pytest
from prefect.client.schemas.objects import StateType

from tests.crash_harness import (
    KEY,
    NODE_EXECUTIONS,
    client,
    crash_canvas,
    execute,
    final,
    http_node,
    one_crash_trial,
    problems_of,
    save,
    seconds,
    states_of,
    until,
)
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.support import prefect_flow_run_id

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
CRASH_DETECT_S = 15
TRIALS = int(os.environ.get("FLOWMAESTRO_CRASH_TRIALS", "2"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    home = tmp_path_factory.mktemp("stack")
    with postgres_database("fm_store") as database_url:
        env = stack_env(home, pg_prefect, database_url, KEY, FLOWMAESTRO_CRASH_DETECT_S=str(CRASH_DETECT_S))
        yield home, env, database_url


@pytest.fixture(scope="module")
def api(stack):
    home, env, _ = stack
    proc, base = start_serve(home, env, workers=0)
    yield proc, base
    proc.stop()


class Workers:
    """Worker processes of the stack, started and killed by the tests."""

    def __init__(self, home, env):
        self.home, self.env = home, env
        self.procs = []

    def start(self, **env):
        proc = start_worker(self.home, {**self.env, **env}, name=f"w-{uuid.uuid4().hex[:6]}")
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def workers(stack, api):
    home, env, _ = stack
    started = Workers(home, env)
    yield started
    started.stop_all()


async def test_a_worker_killed_mid_run_is_replaced_and_nothing_completed_runs_twice(
    api, workers, counting, stack, pg_prefect
):
    _, base = api
    _, _, database_url = stack
    seed = int(os.environ.get("FLOWMAESTRO_CRASH_SEED", time.time()))
    print(f"crash trials: seed {seed} (FLOWMAESTRO_CRASH_SEED)")
    rng = random.Random(seed)
    victim = workers.start()
    async with client(base) as http:
        workflow_id = await save(http, crash_canvas(f"crash-{uuid.uuid4().hex[:6]}"))
        for trial in range(TRIALS):
            outcome = await one_crash_trial(
                http, workers, victim, counting, database_url, pg_prefect.api_url, workflow_id, rng
            )
            victim = outcome["fresh"]
            print(
                f"trial {trial}: killed after {outcome['kill_after']} requests; detected in "
                f"{seconds(outcome['detect_s'])}, resumed {seconds(outcome['resume_s'])} later; "
                f"{len(outcome['requests'])} requests for {NODE_EXECUTIONS} node executions"
            )
            assert problems_of(outcome, CRASH_DETECT_S + 15) == []


async def test_a_run_whose_worker_keeps_dying_ends_failed_saying_why(api, workers, counting):
    _, base = api
    victim = workers.start()
    async with client(base) as http:
        run_id = await execute(
            http, await save(http, crash_canvas(f"doomed-{uuid.uuid4().hex[:6]}")), {"base": counting.url}
        )

        async def started():
            return any((r["key"] or "").startswith(run_id) for r in counting.requests)

        await until(started, timeout=120, what="the run's first request")
        victim.kill()
        workers.start(FLOWMAESTRO_CRASH_RETRIES="0")  # the one crash is already too many
        result = await final(http, run_id)
    assert result["status"] == "failed", result
    assert result["error"]["issues"][0]["code"] == "crash_retries_exhausted", result["error"]
    assert "its worker died 1 time (FLOWMAESTRO_CRASH_RETRIES=0)" in result["error"]["message"]


async def test_retry_of_a_failed_run_reuses_completed_nodes_and_its_dead_letter_is_listed(api, workers, counting):
    _, base = api
    workers.start()
    tag = uuid.uuid4().hex[:6]
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        http_node("a", f"/r{tag}/a", delay=0),
        http_node("b", f"/r{tag}/b", delay=0),
        http_node("c", f"/r{tag}/c", delay=0),
        {"id": "end", "type": "end", "data": {"output": "{{ c.body.count }}"}},
    ]
    chain = ["start", "a", "b", "c", "end"]
    raw = {
        "name": f"retry-{tag}",
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": nodes,
        "edges": [{"id": f"e{i}", "source": x, "target": y} for i, (x, y) in enumerate(zip(chain, chain[1:]))],
    }
    counting.failing.add(f"/r{tag}/c")
    async with client(base) as http:
        workflow_id = await save(http, raw)
        run_id = await execute(http, workflow_id, {"base": counting.url})
        failed = await final(http, run_id)
        assert failed["status"] == "failed", failed
        letters = (await http.get("/api/dead-letters", params={"workflow_id": workflow_id})).json()
        assert [(d["execution_id"], d["node_id"], d["attempts"]) for d in letters] == [(run_id, "c", 1)], letters
        assert "500" in letters[0]["error"]["message"]
        counting.failing.discard(f"/r{tag}/c")
        retried = await http.post(f"/api/dead-letters/{letters[0]['id']}/retry")
        assert retried.status_code == 202 and retried.json()["execution_id"] == run_id, retried.text
        result = await final(http, run_id)
        assert result["status"] == "completed", result
        assert result["output"] == 2  # c's second request
        assert counting.counts[f"/r{tag}/a"] == 1 and counting.counts[f"/r{tag}/b"] == 1
        assert result["nodes"]["a"]["restored"] and result["nodes"]["b"]["restored"]
        assert not result["nodes"]["c"]["restored"]
        assert (await http.get("/api/dead-letters", params={"workflow_id": workflow_id})).json() == []
        again = await http.post(f"/api/executions/{run_id}/retry", json={})
        assert again.status_code == 409, again.text  # completed: nothing to retry


async def test_retry_through_prefects_api_as_its_ui_retry_button_does(api, workers, counting, pg_prefect):
    _, base = api
    workers.start()
    tag = uuid.uuid4().hex[:6]
    raw = {
        "name": f"ui-retry-{tag}",
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            http_node("a", f"/u{tag}/a", delay=0),
            http_node("b", f"/u{tag}/b", delay=0),
        ],
        "edges": [{"id": "e1", "source": "start", "target": "a"}, {"id": "e2", "source": "a", "target": "b"}],
    }
    counting.failing.add(f"/u{tag}/b")
    async with client(base) as http:
        run_id = await execute(http, await save(http, raw), {"base": counting.url})
        assert (await final(http, run_id))["status"] == "failed"
        counting.failing.discard(f"/u{tag}/b")
        flow_run_id = await prefect_flow_run_id(run_id, pg_prefect.api_url)
        async with httpx.AsyncClient(base_url=pg_prefect.api_url, timeout=30) as prefect:
            answer = await prefect.post(
                f"/flow_runs/{flow_run_id}/set_state",
                json={
                    "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
                    "force": True,
                },
            )
            assert answer.json()["status"] == "ACCEPT", answer.text

        async def running_again():
            body = (await http.get(f"/api/executions/{run_id}")).json()
            return body["status"] != "failed" or body.get("nodes", {}).get("b", {}).get("status") == "completed"

        await until(running_again, timeout=60, what="the run picked up again")
        result = await final(http, run_id)
    assert result["status"] == "completed", result
    assert counting.counts[f"/u{tag}/a"] == 1 and counting.counts[f"/u{tag}/b"] == 2
    assert result["nodes"]["a"]["restored"] is True


def approval_canvas(name: str) -> dict:
    return {
        "name": name,
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            http_node("before", f"/{name}/before", delay=0),
            {"id": "ask", "type": "approval", "data": {"message": "Ship?"}},
            http_node("ship", f"/{name}/ship", delay=0),
            {"id": "end", "type": "end", "data": {"output": "{{ ask.approved }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "before"},
            {"id": "e2", "source": "before", "target": "ask"},
            {"id": "e3", "source": "ask", "target": "ship", "sourceHandle": "approved"},
            {"id": "e4", "source": "ship", "target": "end"},
        ],
    }


async def pending(http, run_id):
    async def found():
        body = (await http.get(f"/api/executions/{run_id}")).json()
        return body.get("pending_approvals")

    return await until(found, timeout=120, what="an approval pending")


async def test_a_worker_killed_while_paused_then_the_approval_answered(api, workers, counting):
    _, base = api
    victim = workers.start()
    name = f"paused-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        run_id = await execute(http, await save(http, approval_canvas(name)), {"base": counting.url})
        await pending(http, run_id)
        victim.kill()
        workers.start()
        answer = await http.post(
            f"/api/executions/{run_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
        )
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        result = await final(http, run_id)
    assert result["status"] == "completed" and result["output"] is True, result
    assert counting.counts[f"/{name}/before"] == 1 and counting.counts[f"/{name}/ship"] == 1
    assert result["nodes"]["before"]["restored"] is True


async def test_a_long_wait_is_released_by_its_worker_and_answered_from_the_prefect_ui_or_the_api(
    api, workers, counting, pg_prefect
):
    _, base = api
    workers.start(FLOWMAESTRO_APPROVAL_HOLD_S="2")
    name = f"released-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        workflow_id = await save(http, approval_canvas(name))
        by_ui, by_api = [await execute(http, workflow_id, {"base": counting.url}) for _ in range(2)]
        for run_id in (by_ui, by_api):
            await pending(http, run_id)

            async def suspended(run_id=run_id):
                states = await states_of(pg_prefect.api_url, run_id)
                return states[-1].name == "Suspended"

            await until(suspended, timeout=90, what=f"run {run_id} released (Suspended)")
            body = (await http.get(f"/api/executions/{run_id}")).json()
            assert body["status"] == "paused" and [p["node_id"] for p in body["pending_approvals"]] == ["ask"], body
        async with httpx.AsyncClient(base_url=pg_prefect.api_url, timeout=30) as prefect:
            by_ui_flow_run = await prefect_flow_run_id(by_ui, pg_prefect.api_url)
            answer = await prefect.post(f"/flow_runs/{by_ui_flow_run}/resume", json={"run_input": {"approved": True}})
            assert answer.json()["status"] == "ACCEPT", answer.text
        answer = await http.post(
            f"/api/executions/{by_api}/resume", json={"node_id": "ask", "input": {"approved": True}}
        )
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        results = {run_id: await final(http, run_id) for run_id in (by_ui, by_api)}
    for run_id, via in ((by_ui, "prefect-ui"), (by_api, "api")):
        result = results[run_id]
        assert result["status"] == "completed" and result["output"] is True, result
        assert result["nodes"]["before"]["restored"] is True
        assert result["nodes"]["ask"]["output"]["via"] == via
    assert counting.counts[f"/{name}/before"] == 2 and counting.counts[f"/{name}/ship"] == 2


async def test_the_api_killed_while_a_run_is_paused(stack, api, workers, counting):
    home, env, _ = stack
    workers.start()
    name = f"api-{uuid.uuid4().hex[:6]}"
    proc, base = start_serve(home, env, workers=0)
    try:
        async with client(base) as http:
            run_id = await execute(http, await save(http, approval_canvas(name)), {"base": counting.url})
            await pending(http, run_id)
        proc.kill()
        proc, base = start_serve(home, env, workers=0)
        async with client(base) as http:
            answer = await http.post(
                f"/api/executions/{run_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
            )
            assert answer.status_code == 200, answer.text
            result = await final(http, run_id)
    finally:
        proc.stop()
    assert result["status"] == "completed" and result["output"] is True
    assert not result["nodes"]["before"]["restored"], "the worker never stopped: nothing to restore"


async def test_an_approval_is_answered_once_however_often_the_run_executes_again(api, workers, counting, pg_prefect):
    _, base = api
    workers.start()
    name = f"thrice-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        run_id = await execute(http, await save(http, approval_canvas(name)), {"base": counting.url})
        await pending(http, run_id)
        answer = await http.post(
            f"/api/executions/{run_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
        )
        assert answer.json()["status"] == "accepted"
        assert (await final(http, run_id))["status"] == "completed"
        flow_run_id = await prefect_flow_run_id(run_id, pg_prefect.api_url)
        for replay in range(3):
            # Executed again from the top, through Prefect (as a Retry would, even on a completed run).
            async with httpx.AsyncClient(base_url=pg_prefect.api_url, timeout=30) as prefect:
                forced = await prefect.post(
                    f"/flow_runs/{flow_run_id}/set_state",
                    json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
                )
                assert forced.json()["status"] == "ACCEPT"
            await until(
                lambda replay=replay: _runs(pg_prefect.api_url, run_id, replay + 2),
                timeout=90,
                what=f"execution {replay + 2} of the run",
            )
            result = await final(http, run_id)
            assert result["status"] == "completed" and result["output"] is True, result
            assert result["nodes"]["ask"]["restored"] is True
            assert result.get("pending_approvals") in (None, [])
    assert counting.counts[f"/{name}/ship"] == 1
    states = await states_of(pg_prefect.api_url, run_id)
    assert sum(1 for s in states if s.type == StateType.PAUSED) == 1, "asked once"


async def _runs(prefect_url: str, run_id: str, count: int) -> bool:
    states = await states_of(prefect_url, run_id)
    return sum(1 for s in states if s.type == StateType.COMPLETED) >= count


async def test_a_node_using_run_started_at_is_not_executed_again_after_its_worker_died(api, workers, counting):
    """``run.started_at`` is the run's first start, the same in every execution: a completed
    node whose configuration uses it is restored from the journal, not executed again."""
    _, base = api
    victim = workers.start()
    tag = uuid.uuid4().hex[:6]
    stamp = http_node("stamp", f"/s{tag}/stamp", delay=0)
    stamp["data"]["headers"] = {"X-Run-Started": "{{ run.started_at }}"}
    raw = {
        "name": f"started-at-{tag}",
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            stamp,
            http_node("slow", f"/s{tag}/slow", delay=5),
            {"id": "end", "type": "end", "data": {"output": "{{ stamp.body.count }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "stamp"},
            {"id": "e2", "source": "stamp", "target": "slow"},
            {"id": "e3", "source": "slow", "target": "end"},
        ],
    }
    async with client(base) as http:
        run_id = await execute(http, await save(http, raw), {"base": counting.url})

        async def slow_started():
            return counting.counts[f"/s{tag}/slow"] >= 1

        await until(slow_started, timeout=120, what="the slow node's request")
        victim.kill()  # stamp completed (journaled before slow started); slow in flight
        workers.start()
        result = await final(http, run_id)
    assert result["status"] == "completed", result
    assert counting.counts[f"/s{tag}/slow"] == 2, "the node in flight is executed again"
    assert counting.counts[f"/s{tag}/stamp"] == 1, "the completed node is not"
    assert result["nodes"]["stamp"]["restored"] is True
