"""The outbox of accepted runs (docs/operations.md#accepting-runs) while Prefect is down: the
API in this process on SQLite, nothing listening at its Prefect API URL, so every accepted run
stays accepted and not created. No service needed.

- bounded: beyond ``accept_max_waiting`` an execute answers 503 naming Prefect, with
  Retry-After, and records nothing;
- a run accepted and not created is cancelled in the store, and no drainer creates it;
- what needs its flow run (pause) is a 409 until it exists; a run cancelled before it has
  one is retried by putting it back in the outbox;
- an Idempotency-Key answers the run it accepted, and 422 for other inputs.
"""

from __future__ import annotations

import pytest

from api.settings import ApiSettings
from store.db import make_engine, sessions
from store.outbox import RunOutbox
from tests.support import api_without_prefect, hello

KEY = "outbox-key"
MAX_WAITING = 3


@pytest.fixture
async def api(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'api.db'}"
    settings = ApiSettings(
        database_url=url,
        api_keys=f"solo:{KEY}",
        home=tmp_path,
        prefect_timeout_s=0.3,
        work_pool="nowhere",
        accept_max_waiting=MAX_WAITING,
    )
    async with api_without_prefect(settings, KEY) as client:
        saved = await client.post("/api/workflows", json={"canvas": hello()})
        assert saved.status_code == 201, saved.text
        client.workflow_id = saved.json()["id"]
        client.database_url = url
        yield client


async def execute(api, who: str = "Ada", key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return await api.post(f"/api/workflows/{api.workflow_id}/execute", json={"inputs": {"who": who}}, headers=headers)


async def waiting(api) -> int:
    engine = make_engine(api.database_url)
    try:
        return await RunOutbox(sessions(engine)).awaiting()
    finally:
        await engine.dispose()


async def test_beyond_the_bound_an_execute_is_refused_naming_prefect_and_records_nothing(api):
    accepted = [await execute(api, f"n{i}") for i in range(MAX_WAITING)]
    assert [a.status_code for a in accepted] == [202] * MAX_WAITING
    refused = await execute(api, "one too many")
    assert refused.status_code == 503, refused.text
    assert refused.json()["service"] == "prefect" and refused.headers["retry-after"] == "10", refused.text
    assert "FLOWMAESTRO_ACCEPT_MAX_WAITING" in refused.json()["detail"]
    listed = (await api.get("/api/executions")).json()
    assert sorted(r["id"] for r in listed) == sorted(a.json()["execution_id"] for a in accepted)
    assert await waiting(api) == MAX_WAITING


async def test_a_run_not_created_yet_is_cancelled_in_the_store_and_never_created(api):
    run_id = (await execute(api)).json()["execution_id"]
    assert await waiting(api) == 1
    # What needs its flow run waits for it: a 409 saying so, not a 404 or a 500.
    paused = await api.post(f"/api/executions/{run_id}/pause")
    assert paused.status_code == 409 and "not created yet" in paused.text, paused.text
    cancelled = await api.post(f"/api/executions/{run_id}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled", cancelled.text
    read = (await api.get(f"/api/executions/{run_id}")).json()
    assert read["status"] == "cancelled" and read["flow_run_id"] is None, read
    assert read["error"]["message"] == "cancelled before it started"
    assert await waiting(api) == 0, "no drainer takes it any more"
    again = await api.post(f"/api/executions/{run_id}/cancel")
    assert again.status_code == 409, again.text
    # A retry puts it back in the outbox, as accepted anew: its flow run is created then.
    retried = await api.post(f"/api/executions/{run_id}/retry", json={})
    assert retried.status_code == 202 and retried.json()["status"] == "pending", retried.text
    read = (await api.get(f"/api/executions/{run_id}")).json()
    assert read["status"] == "pending" and read["error"] is None and read["trigger"]["type"] == "retry", read
    assert await waiting(api) == 1


async def test_an_idempotency_key_answers_the_run_it_accepted(api):
    first = await execute(api, "Ada", key="order-1")
    second = await execute(api, "Ada", key="order-1")
    assert first.status_code == second.status_code == 202
    assert first.json()["execution_id"] == second.json()["execution_id"]
    other = await execute(api, "Bob", key="order-1")
    assert other.status_code == 422 and "inputs.who" in other.text, other.text
    assert len((await api.get("/api/executions")).json()) == 1
    assert await waiting(api) == 1


async def test_a_flow_run_made_for_a_run_cancelled_before_the_api_knew_it_does_not_run_it(api):
    """A drainer's create can reach Prefect after the drainer stopped waiting for its answer;
    if the run is cancelled then, its flow run exists with no row naming it. The worker that
    takes that flow run is refused (``record_start`` False): the row stays cancelled and now
    names the flow run, so a retry goes through it. A retry that came first wins instead:
    the run is pending again, and the same flow run runs it. Which came first is one
    statement each, so never both."""
    from store.queries import Executions

    engine = make_engine(api.database_url)
    try:
        executions = Executions(sessions(engine))

        async def worker_starts(run_id: str) -> bool:
            return await executions.record_start(
                execution_id=run_id,
                owner="solo",
                workflow_id=api.workflow_id,
                version=1,
                workflow_name="hello",
                inputs={"who": "Ada"},
                trigger={"type": "api"},
                status="running",
                flow_run_id=f"late-{run_id}",
            )

        refused_first = (await execute(api)).json()["execution_id"]
        assert (await api.post(f"/api/executions/{refused_first}/cancel")).json()["status"] == "cancelled"
        assert await worker_starts(refused_first) is False
        row = await executions.get("solo", refused_first)
        assert (row.status, row.flow_run_id) == ("cancelled", f"late-{refused_first}")
        assert row.result["error"]["message"] == "cancelled before it started"
        # Its retry cannot go back to the outbox now: the flow run is the way.
        assert await executions.reopen(refused_first, 1, retried_by="solo", resend=True) is None
        assert (await executions.get("solo", refused_first)).status == "cancelled"

        retried_first = (await execute(api)).json()["execution_id"]
        assert (await api.post(f"/api/executions/{retried_first}/cancel")).json()["status"] == "cancelled"
        assert (await api.post(f"/api/executions/{retried_first}/retry", json={})).status_code == 202
        assert await worker_starts(retried_first) is True
        row = await executions.get("solo", retried_first)
        assert (row.status, row.flow_run_id, row.result) == ("running", f"late-{retried_first}", None)
    finally:
        await engine.dispose()
