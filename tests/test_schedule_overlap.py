"""``overlap: skip`` skips only runs that really overlap (issue 31, major 6), and every
skipped scheduled run is listed by ``GET /api/executions`` with its reason.

Real processes: ``flowmaestro serve`` with its embedded worker, on the session's Prefect
server (its scheduler loops every 2 s). Prefect's worker takes scheduled runs up to 10 s
before their time: with a 10 s interval, a run taken early used to collide with the one
before it and be cancelled by the deployment's concurrency limit although it would have
started after that one ended.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

from tests.processes import stack_env, start_serve
from tests.support import eventually

pytestmark = [pytest.mark.prefect, pytest.mark.services]
KEY = "overlap-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WATCH_S = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    home = tmp_path_factory.mktemp("overlap")
    env = stack_env(home, prefect_server, f"sqlite+aiosqlite:///{home / 'api.db'}", KEY)
    proc, base = start_serve(home, env, workers=1)
    yield base, env["FLOWMAESTRO_WORK_POOL"], prefect_server.api_url
    proc.stop()


def workflow(name: str, node: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [{"id": "start", "type": "start", "data": {}}, node],
        "edges": [{"id": "e1", "source": "start", "target": node["id"]}],
    }


async def runs_of(api_url: str, pool: str, workflow_id: str) -> list[Any]:
    async with PrefectClient(api_url) as client:
        found = await client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200
        )
    return [r for r in found if (r.parameters or {}).get("workflow_id") == workflow_id]


async def scheduled(http: httpx.AsyncClient, raw: dict[str, Any]) -> tuple[str, str]:
    saved = await http.post("/api/workflows", json={"canvas": raw})
    assert saved.status_code == 201, saved.text
    workflow_id = saved.json()["id"]
    created = await http.post(f"/api/workflows/{workflow_id}/schedules", json={"interval_s": 10, "overlap": "skip"})
    assert created.status_code == 201, created.text
    return workflow_id, created.json()["id"]


async def test_short_runs_every_10_s_with_overlap_skip_skip_nothing_for_a_minute(served):
    base, pool, api_url = served
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
        raw = workflow(f"short-{uuid.uuid4().hex[:6]}", {"id": "t", "type": "transform", "data": {"output": 1}})
        workflow_id, schedule_id = await scheduled(http, raw)
        watched_from = datetime.now(UTC)
        await asyncio.sleep(WATCH_S)  # the thing tested: what a minute of the schedule does
        until = datetime.now(UTC) - timedelta(seconds=5)  # runs due by then have had time to end
        assert (await http.delete(f"/api/workflows/{workflow_id}/schedules/{schedule_id}")).status_code == 204

        async def settled() -> list[Any] | None:
            due = [
                r
                for r in await runs_of(api_url, pool, workflow_id)
                if r.expected_start_time and watched_from <= r.expected_start_time <= until
            ]
            return due if all(r.state and r.state.is_final() for r in due) else None

        due = await eventually(settled, timeout=120, what="the due runs ending")
        listed = (await http.get("/api/executions", params={"workflow_id": workflow_id})).json()
    states = sorted((r.expected_start_time, r.state.name, r.state.message) for r in due)
    assert len(due) >= 4, states
    assert all(r.state.is_completed() for r in due), f"nothing overlapped, so nothing is skipped: {states}"
    for run in due:  # none started before its time
        assert run.start_time >= run.expected_start_time - timedelta(seconds=1), (
            run.start_time,
            run.expected_start_time,
        )
    # (A run that came due after ``until`` may still be going: only the due ones are checked.)
    listed_due = [r for r in listed if r["id"] in {str(run.id) for run in due}]
    assert len(listed_due) == len(due), listed
    assert all(r["status"] == "completed" and r["trigger"]["type"] == "schedule" for r in listed_due), listed_due


async def test_a_run_that_really_overlaps_is_skipped_and_listed_with_its_reason(served):
    base, pool, api_url = served
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
        raw = workflow(f"slow-{uuid.uuid4().hex[:6]}", {"id": "wait", "type": "delay", "data": {"seconds": 15}})
        workflow_id, schedule_id = await scheduled(http, raw)

        async def skipped_listed() -> list[dict[str, Any]] | None:
            listed = (
                await http.get("/api/executions", params={"workflow_id": workflow_id, "trigger": "schedule"})
            ).json()
            cancelled = [r for r in listed if r["status"] == "cancelled"]
            return cancelled if cancelled and any(r["status"] == "completed" for r in listed) else None

        started = time.monotonic()
        cancelled = await eventually(skipped_listed, timeout=150, what="a skipped run listed beside a completed one")
        assert (await http.delete(f"/api/workflows/{workflow_id}/schedules/{schedule_id}")).status_code == 204
        for row in cancelled:
            assert "concurrency limit" in (row["reason"] or ""), row
            assert row["trigger"] == {"type": "schedule", "schedule_id": schedule_id}, row
            result = (await http.get(f"/api/executions/{row['id']}")).json()
            assert result["status"] == "cancelled" and result["error"]["type"] == "Skipped", result
        prefect_runs = {str(r.id): r for r in await runs_of(api_url, pool, workflow_id)}
        for row in cancelled:  # skipped by Prefect at the Pending proposal: it never ran
            assert prefect_runs[row["id"]].run_count == 0
        print(f"first skip listed after {time.monotonic() - started:.0f} s")
