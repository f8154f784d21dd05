"""A run read while its worker ends it (``GET /api/executions/{id}``). The worker stores the
run's result, then ends its flow run; an API that read the row before the result landed and
Prefect's state after it answered a result made up from that state, with no output, and
stored it over the worker's (a "completed" run without its output, seen under load in
tests/test_workers.py). The interleaving is forced: Prefect's client is a stand-in whose
read of the flow run lets the worker's write land first, an order a real server cannot be
made to keep. The store is real (SQLite)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from prefect.states import Completed

from api.settings import ApiSettings
from tests.support import api_without_prefect

KEY = "race-key"
WORKFLOW_ID = str(uuid.uuid4())


@pytest.fixture(scope="module")
async def client(tmp_path_factory):
    home = tmp_path_factory.mktemp("run-result-race")
    settings = ApiSettings(api_keys=f"alice:{KEY}", home=home, database_url=f"sqlite+aiosqlite:///{home / 'api.db'}")
    async with api_without_prefect(settings, KEY) as client:
        yield client


async def new_run(executions, **more) -> str:
    """A run of alice's workflow ``w`` in the store, started and not ended; its id."""
    run_id = str(uuid.uuid4())
    await executions.record_start(
        execution_id=run_id,
        owner="alice",
        workflow_id=WORKFLOW_ID,
        version=1,
        workflow_name="w",
        inputs={},
        trigger={"type": "api"},
        **more,
    )
    return run_id


async def test_a_result_stored_between_the_two_reads_is_answered_and_kept(client, monkeypatch):
    runs = client._transport.app.state.runs  # type: ignore[attr-defined]
    run_id = await new_run(runs.executions, flow_run_id=str(uuid.uuid4()))
    stored = {
        "id": run_id,
        "workflow": "w",
        "workflow_id": WORKFLOW_ID,
        "version": 1,
        "status": "completed",
        "output": "the worker's output",
        "trigger": {"type": "api"},
    }

    class WorkerEndsMeanwhile:
        async def read_flow_run(self, flow_run_id: uuid.UUID) -> SimpleNamespace:
            await runs.executions.record_result(run_id, stored)  # the worker, then its flow run ends
            return SimpleNamespace(state=Completed(), start_time=None)

    monkeypatch.setattr(runs.prefect, "client", WorkerEndsMeanwhile())
    answer = await client.get(f"/api/executions/{run_id}")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["output"]) == ("completed", "the worker's output")
    assert (await runs.executions.get("alice", run_id)).result == stored


async def test_a_result_made_up_from_prefect_never_replaces_the_workers(client):
    executions = client._transport.app.state.runs.executions  # type: ignore[attr-defined]
    run_id = await new_run(executions)
    made_up = {"status": "failed", "error": {"message": "from Prefect"}}
    await executions.record_result(run_id, made_up, unless_stored=True)
    assert (await executions.get("alice", run_id)).result == made_up  # there was none
    await executions.record_result(run_id, {"status": "completed", "output": 1})  # the worker's
    await executions.record_result(run_id, {"status": "failed", "error": {"message": "late"}}, unless_stored=True)
    assert (await executions.get("alice", run_id)).result == {"status": "completed", "output": 1}
