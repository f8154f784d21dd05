"""Waits that cost no worker: an approval with a timeout and a long delay are released by
their worker and woken on time by Prefect (the run Scheduled for the deadline), whatever
happened to the worker meanwhile. Real API and worker processes on a Prefect server on
PostgreSQL."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from flows.approvals import WAKE_EARLY_S
from flows.prefect_compat import DELAY_RELEASE_STATE
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.support import canvas, eventually, execute, node, prefect_flow_run_id, save, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = f"timed-key-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    home = tmp_path_factory.mktemp("timed-waits")
    with postgres_database("fm_store") as database_url:
        env = stack_env(
            home, pg_prefect, database_url, KEY, FLOWMAESTRO_APPROVAL_HOLD_S="5", FLOWMAESTRO_DELAY_RELEASE_S="15"
        )
        api, base = start_serve(home, env, workers=0)
        yield home, env, base, pg_prefect.api_url
        api.stop()


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


async def released(prefect_url: str, run_id: str) -> datetime:
    """Wait until the run is Scheduled again by its release (its worker let go of it); the
    time it is due."""

    async def state():
        async with PrefectClient(prefect_url) as prefect:
            current = (await prefect.read_flow_run(uuid.UUID(await prefect_flow_run_id(run_id, prefect_url)))).state
        if current is not None and current.name == DELAY_RELEASE_STATE:
            return current.state_details.scheduled_time
        return None

    return await eventually(state, timeout=60, what=f"run {run_id} released")


async def node_started_at(http: httpx.AsyncClient, run_id: str, node_id: str) -> float:
    """When the run's node started, from its node:started event."""
    body = (await http.get(f"/api/executions/{run_id}")).json()
    return datetime.fromisoformat(body["nodes"][node_id]["started_at"]).timestamp()


async def infrastructure_pid(prefect_url: str, run_id: str) -> int:
    async with PrefectClient(prefect_url) as prefect:
        flow_run = await prefect.read_flow_run(uuid.UUID(await prefect_flow_run_id(run_id, prefect_url)))
    return int(str(flow_run.infrastructure_pid).split(":")[-1])


async def test_an_approval_timeout_fires_on_time_after_its_worker_was_killed(stack):
    home, env, base, prefect_url = stack
    # Two workers from the start: the one that holds the run is killed once it let go of it,
    # the other (already up: a worker takes 10-20 s to start on a loaded machine) continues it.
    workers = [start_worker(home, env, name=f"timed-{n}-{uuid.uuid4().hex[:4]}") for n in "ab"]
    try:
        raw = canvas(
            [
                node("start", "start"),
                node("ask", "approval", data={"message": "Within 30 s?", "timeout_s": 30}),
                node("yes", data={"output": "answered"}),
                node("late", data={"output": "timed out"}),
            ],
            [("start", "ask"), ("ask", "yes", "approved"), ("ask", "late", "timeout")],
            name=f"timed-approval-{uuid.uuid4().hex[:6]}",
        )
        async with client(base) as http:
            saved = await save(http, raw)
            run_id = await execute(http, saved["id"])
            due = await released(prefect_url, run_id)  # after the 5-s hold, for the timeout
            holder_pid = await infrastructure_pid(prefect_url, run_id)
            holder = next(w for w in workers if w.pid == holder_pid)
            holder.kill()  # SIGKILL: nothing of it cleans up
            fresh = next(w for w in workers if w is not holder)
            # Still answerable while no worker holds it: listed for the owner, with its timeout.
            listed = [a for a in (await http.get("/api/approvals")).json() if a["execution_id"] == run_id]
            assert [a["node_id"] for a in listed] == ["ask"], listed
            timeout_at = datetime.fromisoformat(listed[0]["timeout_at"]).timestamp()
            asked = timeout_at - 30
            # Woken shortly before the timeout, so that the replay is done by then.
            assert abs(due.timestamp() - (timeout_at - WAKE_EARLY_S)) < 1, (due, timeout_at)
            assert time.time() < due.timestamp()  # killed before it was due
            result = await wait_final(http, run_id, timeout=60)
        ended = time.time()
        assert result["status"] == "completed", result
        nodes = result["nodes"]
        assert nodes["late"]["status"] == "completed" and nodes["yes"]["status"] == "skipped", nodes
        output = nodes["ask"]["output"]
        assert output["timed_out"] is True, output
        timed_out_after = datetime.fromisoformat(output["decided_at"]).timestamp() - asked
        assert 30 <= timed_out_after <= 33, timed_out_after  # on time, whatever became of the first worker
        assert ended - asked <= 60, ended - asked  # the rest of the run after the timeout, on a loaded machine
        assert not holder.alive() and fresh.alive()  # only the other worker could have continued it
    finally:
        for worker in workers:
            worker.stop()


async def test_a_long_delay_frees_its_workers_slot_and_ends_on_time(stack):
    home, env, base, prefect_url = stack
    worker = start_worker(home, env, name=f"timed-c-{uuid.uuid4().hex[:4]}", limit=1)
    try:
        sleepy = canvas(
            [node("start", "start"), node("wait", "delay", data={"seconds": 60}), node("end", "end")],
            [("start", "wait"), ("wait", "end")],
            name=f"long-delay-{uuid.uuid4().hex[:6]}",
        )
        quick = canvas(
            [node("start", "start"), node("end", "end", data={"output": "quick"})],
            [("start", "end")],
            name=f"quick-{uuid.uuid4().hex[:6]}",
        )
        async with client(base) as http:
            sleepy_id, quick_id = (await save(http, sleepy))["id"], (await save(http, quick))["id"]
            started = time.time()
            delayed = await execute(http, sleepy_id)
            due = await released(prefect_url, delayed)
            ends = due.timestamp() + WAKE_EARLY_S  # woken shortly before the delay's end
            began = await node_started_at(http, delayed, "wait")
            # 60 s from when the delay began (the worker may take long to start it on a loaded machine).
            assert ends - started >= 60 and 60 <= ends - began < 63, (due, started, began)
            # The worker's one slot is free: another run executes on it meanwhile.
            other = await execute(http, quick_id)
            quick_result = await wait_final(http, other, timeout=40)
            assert quick_result["status"] == "completed" and quick_result["output"] == "quick", quick_result
            meanwhile = (await http.get(f"/api/executions/{delayed}")).json()
            assert meanwhile["status"] == "pending", meanwhile  # released, nobody holds it
            result = await wait_final(http, delayed, timeout=60)
        ended = time.time()
        assert result["status"] == "completed", result
        assert 0 <= ended - ends <= 5, (ended, ends)  # on time, not before
        assert result["nodes"]["wait"]["status"] == "completed"
        assert await infrastructure_pid(prefect_url, delayed) == worker.pid
        assert await infrastructure_pid(prefect_url, other) == worker.pid
    finally:
        worker.stop()
