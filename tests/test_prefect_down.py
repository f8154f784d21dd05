"""With nothing listening at the Prefect API URL, every route that needs Prefect answers 503
naming it, with Retry-After, within the configured bound; saving keeps the workflow (with a
warning) and nothing saved is lost. Starting a run needs only the store: an execute or a
webhook delivery is accepted (202), the run pending until Prefect is back to create its flow
run (docs/operations.md#accepting-runs). The API in this process on SQLite: no service needed."""

from __future__ import annotations

import json
import time

import pytest

from api.settings import ApiSettings
from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.support import api_without_prefect, hello

KEY = "solo-key"
PREFECT_TIMEOUT_S = 0.3  # every call to Prefect fails here (nothing listens): a short bound keeps the test short
ANSWER_WITHIN_S = 15
"""The bound on a request while Prefect is down: PREFECT_TIMEOUT_S per call to Prefect, and a
loaded machine."""


@pytest.fixture
async def client(tmp_path):
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
        api_keys=f"solo:{KEY}",
        home=tmp_path,
        prefect_timeout_s=PREFECT_TIMEOUT_S,
        work_pool="nowhere",
    )
    async with api_without_prefect(settings, KEY) as client:
        yield client


async def execute(client, workflow_id: str):
    return await client.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "Ada"}})


async def add_schedule(client, workflow_id: str):
    return await client.post(
        f"/api/workflows/{workflow_id}/schedules", json={"cron": "0 1 * * *", "inputs": {"who": "x"}}
    )


async def list_schedules(client, workflow_id: str):
    return await client.get(f"/api/workflows/{workflow_id}/schedules")


async def deliver_webhook(client, workflow_id: str):
    hook = await client.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "x"})
    assert hook.status_code == 201, hook.text  # webhooks are FlowMaestro's records: no Prefect needed
    body, now = json.dumps({"who": "x"}).encode(), int(time.time())
    headers = {
        TIMESTAMP_HEADER: str(now),
        SIGNATURE_HEADER: sign(hook.json()["secret"], now, body),
        "content-type": "application/json",
        "Authorization": "",
    }  # the signature is the credential
    return await client.post(hook.json()["url"], content=body, headers=headers)


@pytest.mark.parametrize("request_needing_prefect", [add_schedule, list_schedules], ids=lambda call: call.__name__)
async def test_prefect_down_answers_503_naming_it_and_loses_no_saved_workflow(client, request_needing_prefect):
    raw = hello()
    saved = await client.post("/api/workflows", json={"canvas": raw})
    assert saved.status_code == 201, saved.text
    assert [w["code"] for w in saved.json()["warnings"]] == ["deployment_pending"]
    workflow_id = saved.json()["id"]
    assert (await client.get(f"/api/workflows/{workflow_id}")).status_code == 200
    again = await client.put(f"/api/workflows/{workflow_id}", json={"canvas": raw})  # tries the deployment again
    assert [w["code"] for w in again.json()["warnings"]] == ["unchanged", "deployment_pending"], again.text
    started = time.monotonic()
    answer = await request_needing_prefect(client, workflow_id)
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert answer.status_code == 503, answer.text
    assert answer.json()["service"] == "prefect" and answer.headers["retry-after"] == "5", answer.text
    health = await client.get("/health")
    assert health.status_code == 503 and health.json()["checks"]["prefect"] != "ok"
    assert [w["id"] for w in (await client.get("/api/workflows")).json()] == [workflow_id]


@pytest.mark.parametrize("start", [execute, deliver_webhook], ids=lambda call: call.__name__)
async def test_prefect_down_a_run_is_still_accepted_and_waits_pending_for_its_flow_run(client, start):
    saved = await client.post("/api/workflows", json={"canvas": hello()})
    workflow_id = saved.json()["id"]
    started = time.monotonic()
    answer = await start(client, workflow_id)
    assert time.monotonic() - started < ANSWER_WITHIN_S
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["execution_id"]
    read = await client.get(f"/api/executions/{run_id}")
    assert read.status_code == 200, read.text
    assert read.json()["status"] == "pending" and read.json()["flow_run_id"] is None, read.text
    [listed] = (await client.get("/api/executions")).json()
    assert listed["id"] == run_id and listed["status"] == "pending" and listed["flow_run_id"] is None
