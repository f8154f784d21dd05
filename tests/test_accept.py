"""Accept fast, lose nothing (docs/operations.md#accepting-runs), with real processes: the
API (`flowmaestro serve --workers 0`) records a run and answers 202 before Prefect has its
flow run; its drainer creates the flow run after. Prefect is reached through a local TCP
proxy (tests/slow_proxy.py) that the tests stop (Prefect unreachable) or slow down.

- the API killed (-9) between accepting a run and creating its flow run: the restarted API
  creates it, and the run executes once;
- a burst of executes while every Prefect request takes a second: each answered at once,
  every run gets exactly one flow run and completes.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from deployments.workflow_deployments import WORKFLOW_TAG
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.slow_proxy import SlowProxy
from tests.support import eventually, wait_final
from tests.support import save as save_workflow

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "accept-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BURST = 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    """The store on PostgreSQL, Prefect on PostgreSQL; the API's Prefect behind a proxy."""
    home = tmp_path_factory.mktemp("accept")
    upstream = pg_prefect.api_url.split("//")[1].split("/")[0]
    host, port = upstream.split(":")
    with postgres_database("fm_accept") as database_url, SlowProxy(host, int(port)) as proxy:
        env = stack_env(home, pg_prefect, database_url, KEY)
        api_env = {
            **env,
            "PREFECT_API_URL": f"{proxy.url}/api",
            # Short, so that a claim left by the killed API expires within the test.
            "FLOWMAESTRO_PREFECT_TIMEOUT_S": "5",
            "FLOWMAESTRO_ACCEPT_SCAN_S": "1",
        }
        yield home, env, api_env, proxy


def http(base: str, *, burst: bool = False) -> httpx.AsyncClient:
    """A client of the API; for a burst, a connection per request (a kept one may be closed
    by the server's keep-alive timeout while the burst waits: a ReadError, not an answer)."""
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0) if burst else httpx.Limits()
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60, limits=limits)


def counted_canvas(name: str, url: str) -> dict:
    """One http node that asks the counting server: how many times it executed."""
    return {
        "name": name,
        "inputs": {"tag": {"type": "string", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {
                "id": "hit",
                "type": "http",
                "data": {"method": "POST", "url": url + "/{{ inputs.tag }}"},
                "retry": {"max_attempts": 1},
            },
            {"id": "end", "type": "end", "data": {"output": "{{ hit.body.count }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "hit"},
            {"id": "e2", "source": "hit", "target": "end"},
        ],
    }


async def flow_runs_of(prefect_url: str, workflow_id: str) -> dict[str, list[str]]:
    """``{execution id: [flow run ids]}`` of the workflow's flow runs, as Prefect has them."""
    found = []
    async with PrefectClient(prefect_url) as prefect:
        while page := await prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[WORKFLOW_TAG.format(id=workflow_id)])),
            limit=200,  # Prefect's most
            offset=len(found),
        ):
            found.extend(page)
    runs: dict[str, list[str]] = {}
    for flow_run in found:
        runs.setdefault(str((flow_run.parameters or {}).get("execution_id")), []).append(str(flow_run.id))
    return runs


async def test_the_api_killed_between_accepting_a_run_and_creating_its_flow_run(stack, pg_prefect, counting):
    home, env, api_env, proxy = stack
    api, base = start_serve(home, api_env, workers=0)
    worker = start_worker(home, env, name=f"accept-{uuid.uuid4().hex[:6]}")
    tag = f"once-{uuid.uuid4().hex[:8]}"
    try:
        async with http(base) as client:
            saved = await save_workflow(client, counted_canvas(f"accept-{tag}", counting.url))
            proxy.stop()  # Prefect unreachable from the API: the run cannot be created
            started = await client.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"tag": tag}})
            assert started.status_code == 202, started.text
            execution_id = started.json()["execution_id"]
            read = (await client.get(f"/api/executions/{execution_id}")).json()
            assert read["status"] == "pending" and read["flow_run_id"] is None, read
        api.kill()  # SIGKILL: nothing of it cleans up
        assert await flow_runs_of(pg_prefect.api_url, saved["id"]) == {}
        proxy.start()
        api, base = start_serve(home, api_env, workers=0)
        async with http(base) as client:
            result = await wait_final(client, execution_id, timeout=180)
        assert result["status"] == "completed", result
        assert result["output"] == 1 and counting.counts[f"/{tag}"] == 1
        runs = await flow_runs_of(pg_prefect.api_url, saved["id"])
        assert runs == {execution_id: [result["flow_run_id"]]}
    finally:
        proxy.start()
        api.stop()
        worker.stop()


async def test_a_burst_of_executes_while_prefect_answers_nothing_is_answered_at_once(stack, pg_prefect, counting):
    """Every request the API makes to Prefect is held (not answered) while 200 executes come at
    once: all 200 are answered 202 all the same, before Prefect has created any of their flow
    runs. Then Prefect answers again, slowly (1 s a request): each run gets exactly one flow
    run, and a sample of them completes with its node executed once. The answer times are
    printed; their quiet-machine target is the benchmark's (benchmarks/api.py, docs/performance.md)."""
    home, env, api_env, proxy = stack
    api, base = start_serve(home, api_env, workers=0)
    worker = start_worker(home, env, name=f"burst-{uuid.uuid4().hex[:6]}", limit=50)
    try:
        async with http(base) as client, http(base, burst=True) as bursting:
            saved = await save_workflow(client, counted_canvas(f"burst-{uuid.uuid4().hex[:6]}", counting.url))
            proxy.hold()
            forwarded = proxy.requests
            tags = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(BURST)]

            async def execute(tag: str) -> tuple[float, httpx.Response]:
                began = time.perf_counter()
                answer = await bursting.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"tag": tag}})
                return time.perf_counter() - began, answer

            answers = await asyncio.gather(*(execute(tag) for tag in tags))
            assert [a.status_code for _, a in answers] == [202] * BURST, [
                a.text for _, a in answers if a.status_code != 202
            ][:3]
            # Answered without Prefect: none of the API's requests reached it meanwhile.
            assert proxy.requests == forwarded
            assert await flow_runs_of(pg_prefect.api_url, saved["id"]) == {}
            times = sorted(t for t, _ in answers)
            print(
                f"burst of {BURST} executes, Prefect holding every request: p50 {times[BURST // 2]:.3f} s, "
                f"p95 {times[int(BURST * 0.95) - 1]:.3f} s, max {times[-1]:.3f} s"
            )
            executions = [a.json()["execution_id"] for _, a in answers]
            read = (await client.get(f"/api/executions/{executions[0]}")).json()
            assert read["status"] == "pending" and read["flow_run_id"] is None, read
            proxy.delay_s = 1.0
            proxy.release()

            async def all_created() -> dict[str, list[str]] | None:
                runs = await flow_runs_of(pg_prefect.api_url, saved["id"])
                return runs if len(runs) >= BURST else None

            runs = await eventually(all_created, timeout=240, what=f"{BURST} flow runs created")
            assert sorted(runs) == sorted(executions) and all(len(ids) == 1 for ids in runs.values())
            proxy.delay_s = 0.0
            sample = list(range(0, BURST, BURST // 10))
            for i in sample:  # a sample completes, its node executed once
                result = await wait_final(client, executions[i], timeout=240)
                assert result["status"] == "completed" and result["output"] == 1, result
                assert counting.counts[f"/{tags[i]}"] == 1
    finally:
        proxy.delay_s = 0.0
        proxy.release()
        api.stop()
        worker.stop()


async def test_a_run_cancelled_before_its_flow_run_existed_runs_once_when_retried(stack, pg_prefect, counting):
    """Cancelled while Prefect answered nothing: no flow run is created for it. Retried, it is
    accepted anew: one flow run, and its node executes once."""
    home, env, api_env, proxy = stack
    api, base = start_serve(home, api_env, workers=0)
    worker = start_worker(home, env, name=f"retry-{uuid.uuid4().hex[:6]}")
    tag = f"retry-{uuid.uuid4().hex[:8]}"
    try:
        async with http(base) as client:
            saved = await save_workflow(client, counted_canvas(f"accept-{tag}", counting.url))
            proxy.hold()
            started = await client.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"tag": tag}})
            assert started.status_code == 202, started.text
            execution_id = started.json()["execution_id"]
            cancelled = await client.post(f"/api/executions/{execution_id}/cancel")
            assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled", cancelled.text
            proxy.release()
            retried = await client.post(f"/api/executions/{execution_id}/retry", json={})
            assert retried.status_code == 202, retried.text
            result = await wait_final(client, execution_id, timeout=180)
        assert result["status"] == "completed" and result["output"] == 1, result
        assert result["trigger"]["type"] == "retry" and counting.counts[f"/{tag}"] == 1
        runs = await flow_runs_of(pg_prefect.api_url, saved["id"])
        assert runs == {execution_id: [result["flow_run_id"]]}
    finally:
        proxy.release()
        api.stop()
        worker.stop()
