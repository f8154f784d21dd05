"""Runs execute on real worker processes, from a real Prefect server on PostgreSQL.

The API (`flowmaestro serve --workers 0`) and the workers (`flowmaestro worker`) are
separate processes, as in production: a run started by the API, one started through
Prefect's API as its UI's Run form does it, one started by a parent workflow; twenty runs
over two workers with a cached node executed once; an API process killed mid-run.
"""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from tests.processes import postgres_database, stack_env, start_serve, start_worker, wait_until
from tests.support import save, save_and_execute, wait_final, wait_running

final = partial(wait_final, timeout=120)

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "worker-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect, counting):
    home = tmp_path_factory.mktemp("stack")
    with postgres_database("fm_store") as database_url:
        yield home, stack_env(home, pg_prefect, database_url, KEY)


@pytest.fixture(scope="module")
def api(stack):
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield proc, base
    proc.stop()


@pytest.fixture(scope="module")
def workers(stack, api):
    home, env = stack
    started = [start_worker(home, env, name=f"w{i}-{uuid.uuid4().hex[:4]}") for i in range(2)]
    yield started
    for worker in started:
        worker.stop()


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30)


def greeting(name: str) -> dict:
    return {
        "name": name,
        "inputs": {"who": {"type": "string", "required": True, "description": "Who to greet"}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "greet", "type": "transform", "data": {"output": "Hello {{ inputs.who }}"}},
            {"id": "end", "type": "end", "data": {"output": "{{ greet }}"}},
        ],
        "edges": [{"id": "e1", "source": "start", "target": "greet"}, {"id": "e2", "source": "greet", "target": "end"}],
    }


async def test_a_run_from_the_api_executes_on_a_worker(api, workers, pg_prefect):
    proc, base = api
    async with client(base) as http:
        saved = await save(http, greeting(f"greet-{uuid.uuid4().hex[:6]}"))
        started = await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "Ada"}})
        assert started.status_code == 202, started.text
        run_id = started.json()["execution_id"]
        result = await final(http, run_id)
        assert result["status"] == "completed" and result["output"] == "Hello Ada", result
        assert result["trigger"] == {"type": "api"}
    async with PrefectClient(pg_prefect.api_url) as prefect:
        flow_run = await prefect.read_flow_run(uuid.UUID(result["flow_run_id"]))
        deployment = await prefect.read_deployment(flow_run.deployment_id)
    assert f"workflow:{saved['id']}" in deployment.tags and saved["name"] in deployment.name
    # Executed by one of the worker processes, not by the API's.
    assert flow_run.infrastructure_pid and flow_run.infrastructure_pid.split(":")[-1] in {str(w.pid) for w in workers}


async def test_a_run_started_as_the_prefect_ui_does_it(api, workers, pg_prefect):
    proc, base = api
    async with client(base) as http:
        saved = await save(http, greeting(f"ui-{uuid.uuid4().hex[:6]}"))
        async with PrefectClient(pg_prefect.api_url) as prefect:
            deployments = await prefect.read_deployments()
            deployment = next(d for d in deployments if f"workflow:{saved['id']}" in d.tags)
            form = deployment.parameter_openapi_schema["properties"]["inputs"]
            assert form["properties"]["who"]["type"] == "string" and form["required"] == ["who"]
            assert form["properties"]["who"]["description"] == "Who to greet"
            # The UI posts the form's values; the deployment's own parameters name the workflow.
            flow_run = await prefect.create_flow_run_from_deployment(
                deployment.id, parameters={"inputs": {"who": "UI"}}
            )
        result = await final(http, str(flow_run.id))
        assert result["status"] == "completed" and result["output"] == "Hello UI"
        assert result["trigger"]["type"] == "prefect-ui"
        listed = (await http.get("/api/executions", params={"trigger": "prefect-ui"})).json()
        assert str(flow_run.id) in [e["id"] for e in listed]


async def test_a_child_workflow_runs_as_a_subflow_of_its_parent(api, workers, pg_prefect):
    proc, base = api
    async with client(base) as http:
        child = await save(http, greeting(f"child-{uuid.uuid4().hex[:6]}"))
        parent = {
            "name": f"parent-{uuid.uuid4().hex[:6]}",
            "nodes": [
                {"id": "start", "type": "start", "data": {}},
                {"id": "call", "type": "subworkflow", "data": {"workflow": child["id"], "inputs": {"who": "child"}}},
                {"id": "end", "type": "end", "data": {"output": "{{ call }}"}},
            ],
            "edges": [
                {"id": "e1", "source": "start", "target": "call"},
                {"id": "e2", "source": "call", "target": "end"},
            ],
        }
        saved = await save(http, parent)
        run_id = (await http.post(f"/api/workflows/{saved['id']}/execute", json={})).json()["execution_id"]
        result = await final(http, run_id)
        assert result["status"] == "completed" and result["output"] == "Hello child", result
    async with PrefectClient(pg_prefect.api_url) as prefect:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        children = await prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[uuid.UUID(result["flow_run_id"])])
            )
        )
    assert len(children) == 1 and children[0].state.is_completed()


async def test_twenty_runs_over_two_workers_none_lost_and_a_cached_node_executed_once(api, workers, counting):
    proc, base = api
    path = f"/cached-{uuid.uuid4().hex[:6]}"
    raw = {
        "name": f"cached-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {
                "id": "fetch",
                "type": "http",
                "cache": {"enabled": True, "ttl_s": 600},
                "data": {"method": "GET", "url": f"{counting.url}{path}?delay=0.5"},
            },
            {"id": "wait", "type": "delay", "data": {"seconds": 0.2}},
            {"id": "end", "type": "end", "data": {"output": "{{ fetch.body.path }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "fetch"},
            {"id": "e2", "source": "fetch", "target": "wait"},
            {"id": "e3", "source": "wait", "target": "end"},
        ],
    }
    async with client(base) as http:
        saved = await save(http, raw)
        answers = await asyncio.gather(
            *(http.post(f"/api/workflows/{saved['id']}/execute", json={}) for _ in range(20))
        )
        assert [a.status_code for a in answers] == [202] * 20
        results = await asyncio.gather(*(final(http, a.json()["execution_id"], timeout=240) for a in answers))
    assert [r["status"] for r in results] == ["completed"] * 20, [r.get("error") for r in results]
    assert {r["output"] for r in results} == {path}
    assert counting.counts[path] == 1, f"the cached node ran {counting.counts[path]} times"
    assert sum(1 for r in results if r["nodes"]["fetch"]["cached"]) == 19


async def test_runs_are_named_after_their_workflow_in_prefect(api, workers, pg_prefect):
    proc, base = api
    name = f"named-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        saved = await save(http, greeting(name))
        run_id = (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "N"}})).json()[
            "execution_id"
        ]
        result = await final(http, run_id)
        assert result["status"] == "completed"
    async with PrefectClient(pg_prefect.api_url) as prefect:
        assert (await prefect.read_flow_run(uuid.UUID(result["flow_run_id"]))).name == name


async def test_the_api_killed_mid_run_changes_nothing_for_the_run(stack, workers, counting):
    """Its own API process, killed: the module's stays up for the other tests, in any order."""
    home, env = stack
    path = f"/after-{uuid.uuid4().hex[:6]}"
    raw = {
        "name": f"slow-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "wait", "type": "delay", "data": {"seconds": 4}},
            {"id": "after", "type": "http", "data": {"method": "POST", "url": f"{counting.url}{path}"}},
            {"id": "end", "type": "end", "data": {"output": "{{ after.status }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "wait"},
            {"id": "e2", "source": "wait", "target": "after"},
            {"id": "e3", "source": "after", "target": "end"},
        ],
    }
    doomed, base = start_serve(home, env, workers=0)
    try:
        async with client(base) as http:
            run_id = await save_and_execute(http, raw)
            await wait_running(http, run_id, "wait")
    finally:
        doomed.kill()  # SIGKILL: the API gets no chance to do anything
    wait_until(lambda: counting.counts[path] == 1, timeout=60, what="the run's last node calling out")
    restarted, new_base = start_serve(home, env, workers=0)
    try:
        async with client(new_base) as http:
            result = await final(http, run_id)
        assert result["status"] == "completed" and result["output"] == 200
        assert counting.counts[path] == 1
    finally:
        restarted.stop()
