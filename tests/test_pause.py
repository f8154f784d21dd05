"""Pausing a live run and breakpoints, on real processes: the API (`flowmaestro serve
--workers 0`), a `flowmaestro worker`, a Prefect server on PostgreSQL, and a local counting
HTTP server whose request log says what started when.

One stack for the module (crash detection shortened to 15 s); the last test kills the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid

import httpx
import pytest

from flows.pauses import breakpoint_slug
from tests.crash_harness import KEY, client, final, http_node, save, states_of, until
from tests.processes import cli, postgres_database, stack_env, start_serve, start_worker
from tests.support import prefect_flow_run_id

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
CRASH_DETECT_S = 15


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    home = tmp_path_factory.mktemp("pause")
    with postgres_database("fm_pause") as database_url:
        env = stack_env(home, pg_prefect, database_url, KEY, FLOWMAESTRO_CRASH_DETECT_S=str(CRASH_DETECT_S))
        proc, base = start_serve(home, env, workers=0)
        workers = [start_worker(home, env, name=f"p-{uuid.uuid4().hex[:6]}")]
        try:
            yield home, env, base, workers
        finally:
            for worker in workers:
                worker.stop()
            proc.stop()


def chain(name: str, first_delay: float = 4) -> dict:
    """start -> a (a slow request) -> b -> c -> end: each http node counted by its path. ``a``
    is slow enough that a pause asked for once it has started reaches the run before it ends
    (the API's writes, then the worker's watcher, which reads its runs every second)."""
    return {
        "name": name,
        "inputs": {"base": {"type": "string", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            http_node("a", f"/{name}/a", delay=first_delay),
            http_node("b", f"/{name}/b", delay=0),
            http_node("c", f"/{name}/c", delay=0),
            {"id": "end", "type": "end", "data": {"output": "{{ a.body.path }} {{ b.body.path }} {{ c.body.path }}"}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "a"},
            {"id": "e2", "source": "a", "target": "b"},
            {"id": "e3", "source": "b", "target": "c"},
            {"id": "e4", "source": "c", "target": "end"},
        ],
    }


async def run(http: httpx.AsyncClient, name: str, base: str, **body) -> str:
    workflow_id = await save(http, chain(name, **body.pop("canvas", {})))
    started = await http.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"base": base}, **body})
    assert started.status_code == 202, started.text
    return started.json()["execution_id"]


async def paused(http: httpx.AsyncClient, run_id: str, timeout: float = 90) -> dict:
    async def check():
        body = (await http.get(f"/api/executions/{run_id}")).json()
        return body if body["status"] == "paused" and body.get("pause") else None

    return await until(check, timeout=timeout, what=f"run {run_id} paused")


async def events_of(http: httpx.AsyncClient, run_id: str) -> list[tuple[str, dict]]:
    """The run's whole event stream (it has ended): (type, data) in order."""
    found: list[tuple[str, dict]] = []
    async with http.stream("GET", f"/api/executions/{run_id}/stream", timeout=60) as response:
        kind = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                found.append((kind, json.loads(line.split(":", 1)[1])))
    return found


async def flowmaestro(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI against the stack's API."""
    env = {**os.environ, "FLOWMAESTRO_API_URL": base, "FLOWMAESTRO_API_KEY": KEY}
    return await asyncio.to_thread(
        subprocess.run, cli(*args), env=env, capture_output=True, text=True, timeout=120, check=False
    )


def requested(counting, path: str):
    async def check() -> bool:
        return counting.counts[path] >= 1

    return check


def requests_to(counting, path: str) -> list[dict]:
    return [r for r in counting.requests if r["path"] == path]


async def test_a_pause_while_a_node_runs_takes_effect_at_the_boundary_and_nothing_starts_until_resumed(stack, counting):
    _, _, base, _ = stack
    name = f"pause-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        run_id = await run(http, name, counting.url)
        await until(requested(counting, f"/{name}/a"), timeout=90, what="node a started")
        asked = await http.post(f"/api/executions/{run_id}/pause")
        assert asked.status_code == 202 and asked.json()["status"] == "pausing", asked.text
        body = await paused(http, run_id)
        assert body["pause"]["reason"] == "manual" and body["pause"]["by"] == "tester", body
        assert body["pending_approvals"] == [], "a pause is not an approval to answer"
        assert body["nodes"]["a"]["status"] == "completed", "the node running was not cut short"
        again = await flowmaestro(base, "executions", "pause", run_id)
        assert again.returncode == 0 and f"{run_id}: paused" in again.stdout, again
        # Paused: time passes and b does not start (the counter, and its request's time below).
        await asyncio.sleep(2)
        assert counting.counts[f"/{name}/b"] == 0
        resumed_at = time.time()
        answer = await http.post(f"/api/executions/{run_id}/resume", json={})
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        result = await final(http, run_id)
        events = await events_of(http, run_id)
        not_paused = await http.post(f"/api/executions/{run_id}/pause")
        resume_ended = await http.post(f"/api/executions/{run_id}/resume", json={})
    assert result["status"] == "completed", result
    assert result["output"] == f"/{name}/a /{name}/b /{name}/c"
    assert [counting.counts[f"/{name}/{n}"] for n in "abc"] == [1, 1, 1]
    [a], [b] = requests_to(counting, f"/{name}/a"), requests_to(counting, f"/{name}/b")
    assert b["at"] >= resumed_at > a["answered"], "b started only after the resume"
    kinds = [k for k, _ in events]
    paused_at, resumed = kinds.index("execution:paused"), kinds.index("execution:resumed")
    assert [k for k in kinds[paused_at:resumed] if k == "node:started"] == [], kinds
    started = [d["node_id"] for k, d in events if k == "node:started"]
    assert started.index("b") > 0 and kinds.index("node:completed") < paused_at
    assert dict(events[paused_at][1]["pause"], requested_at=None) == {
        "reason": "manual",
        "by": "tester",
        "requested_at": None,
    }
    assert not_paused.status_code == 409 and "ended" in not_paused.json()["detail"], not_paused.text
    assert resume_ended.status_code == 409, resume_ended.text


async def test_breakpoints_twice_in_one_run_resumed_from_our_api_then_prefects(stack, counting, pg_prefect):
    _, _, base, _ = stack
    name = f"bp-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        workflow_id = await save(http, chain(name, first_delay=0))
        unknown = await http.post(
            f"/api/workflows/{workflow_id}/execute",
            json={"inputs": {"base": counting.url}, "breakpoints": ["b", "nope"]},
        )
        assert unknown.status_code == 422, unknown.text
        assert [i["field"] for i in unknown.json()["issues"]] == ["body.breakpoints.1"], unknown.text
        started = await http.post(
            f"/api/workflows/{workflow_id}/execute", json={"inputs": {"base": counting.url}, "breakpoints": ["b", "c"]}
        )
        run_id = started.json()["execution_id"]
        first = await paused(http, run_id)
        assert first["pause"] == {"reason": "breakpoint", "node_id": "b", "path": []}, first
        assert [counting.counts[f"/{name}/{n}"] for n in "abc"] == [1, 0, 0]
        answer = await http.post(f"/api/executions/{run_id}/resume", json={})
        assert answer.status_code == 200, answer.text

        async def at_c():
            body = (await http.get(f"/api/executions/{run_id}")).json()
            return body if (body.get("pause") or {}).get("node_id") == "c" else None

        second = await until(at_c, timeout=90, what="the second breakpoint")
        assert second["status"] == "paused" and second["nodes"]["b"]["status"] == "completed", second
        assert [counting.counts[f"/{name}/{n}"] for n in "abc"] == [1, 1, 0]
        # The Prefect UI's Resume: Prefect's own API, once Prefect has the run paused.
        flow_run_id = await prefect_flow_run_id(run_id, pg_prefect.api_url)
        async with httpx.AsyncClient(base_url=pg_prefect.api_url, timeout=30) as prefect:

            async def prefect_paused_at_c():
                # On c's own pause key: Prefect's pause of b may not have been ended yet.
                state = (await prefect.get(f"/flow_runs/{flow_run_id}")).json()["state"]
                key = (state.get("state_details") or {}).get("pause_key") or ""
                return state["type"] == "PAUSED" and key.startswith(breakpoint_slug("c", ()))

            await until(prefect_paused_at_c, timeout=60, what="Prefect showing the run paused before c")
            resumed = await prefect.post(f"/flow_runs/{flow_run_id}/resume", json={"run_input": {"approved": True}})
            assert resumed.json()["status"] == "ACCEPT", resumed.text
        result = await final(http, run_id)
    assert result["status"] == "completed" and result["output"] == f"/{name}/a /{name}/b /{name}/c", result
    assert [counting.counts[f"/{name}/{n}"] for n in "abc"] == [1, 1, 1]


async def test_a_paused_run_survives_its_worker_killed_and_resumes_on_another(stack, counting, pg_prefect):
    home, env, base, workers = stack
    name = f"kill-{uuid.uuid4().hex[:6]}"
    async with client(base) as http:
        run_id = await run(http, name, counting.url)
        await until(requested(counting, f"/{name}/a"), timeout=90, what="node a started")
        assert (await http.post(f"/api/executions/{run_id}/pause")).status_code == 202
        await paused(http, run_id)
        victim = workers.pop()
        victim.kill()  # SIGKILL: the run's pause was held in that process's memory
        workers.append(start_worker(home, env, name=f"p-{uuid.uuid4().hex[:6]}"))
        body = (await http.get(f"/api/executions/{run_id}")).json()
        assert body["status"] in ("paused", "pending"), body  # pending: recovery already rescheduled it
        assert counting.counts[f"/{name}/b"] == 0
        answer = await flowmaestro(base, "executions", "resume", run_id)
        assert answer.returncode == 0 and f"{run_id}: accepted" in answer.stdout, answer
        result = await final(http, run_id)
    assert result["status"] == "completed" and result["output"] == f"/{name}/a /{name}/b /{name}/c", result
    assert [counting.counts[f"/{name}/{n}"] for n in "abc"] == [1, 1, 1], "a restored, b and c once"
    assert result["nodes"]["a"]["restored"] is True
    names = [s.name for s in await states_of(pg_prefect.api_url, run_id)]
    assert "Crashed" in names or "Suspended" in names, names
