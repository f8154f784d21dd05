"""PATCH /api/workflows/{id}: description, tags and status without a new version, and what a
status does, on SQLite and PostgreSQL with the session's real Prefect server. Schedules paused
by a status are read back from Prefect itself (the deployment's schedules and its scheduled
runs), as the Prefect UI shows them. The work pool has no worker: runs stay where they are."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from api.signing import sign
from tests.manage_support import api_client, scratch_postgres
from tests.support import eventually, hello

pytestmark = pytest.mark.prefect


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def api(request, tmp_path_factory, prefect_server):
    home = tmp_path_factory.mktemp(f"meta-{request.param}")
    pool = f"meta-{request.param}-{uuid.uuid4().hex[:6]}"  # no worker polls it
    if request.param == "sqlite":
        async with api_client(f"sqlite+aiosqlite:///{home / 'store.db'}", home, pool) as client:
            yield client
    else:
        async with scratch_postgres("fm_meta") as url, api_client(url, home, pool) as client:
            yield client


async def saved(api) -> str:
    answer = await api.post("/api/workflows", json={"canvas": hello(f"meta-{uuid.uuid4().hex[:8]}")})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


async def prefect_schedules(api, workflow_id: str) -> dict[str, bool]:
    """The deployment's schedules as Prefect has them: id -> active."""
    _saved, _plan, deployment_id = await api.app.state.runs.deployment_of(api.owner, workflow_id)
    async with get_client() as client:
        return {str(s.id): s.active for s in await client.read_deployment_schedules(deployment_id)}


async def scheduled_runs(api, workflow_id: str) -> int:
    """The deployment's runs waiting in Prefect's Scheduled state (its scheduler makes them ahead)."""
    _saved, _plan, deployment_id = await api.app.state.runs.deployment_of(api.owner, workflow_id)
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
    return len(runs)


async def test_patch_changes_metadata_without_a_version_and_reads_show_it(api):
    workflow_id = await saved(api)
    before = (await api.get(f"/api/workflows/{workflow_id}")).json()
    assert (before["description"], before["tags"], before["status"]) == ("", [], "active")

    patched = await api.patch(
        f"/api/workflows/{workflow_id}",
        json={"description": "Greets people", "tags": ["demo", "greeting", "demo"], "status": "draft"},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["description"], body["tags"], body["status"]) == ("Greets people", ["demo", "greeting"], "draft")
    assert body["latest_version"] == 1  # no new version
    read = (await api.get(f"/api/workflows/{workflow_id}")).json()
    assert (read["version"], read["tags"], read["status"], read["description"]) == (
        1,
        ["demo", "greeting"],
        "draft",
        "Greets people",
    )
    # Only what is given changes; tags are replaced as a whole.
    again = (await api.patch(f"/api/workflows/{workflow_id}", json={"tags": ["greeting"]})).json()
    assert (again["tags"], again["status"], again["description"]) == (["greeting"], "draft", "Greets people")
    listed = (await api.get("/api/workflows", params={"tag": "greeting"})).json()
    assert [(w["id"], w["status"]) for w in listed] == [(workflow_id, "draft")]

    for bad, field in (
        ({"status": "deleted"}, "body.status"),
        ({"tags": ["ok", " leading space"]}, "body.tags.1"),
        ({"tags": "demo"}, "body.tags"),
        ({"tags": [f"t{i}" for i in range(21)]}, "body.tags"),
        ({"description": "x" * 2001}, "body.description"),
        ({"description": "nul \x00 inside"}, "body.description"),
        ({"name": "renamed"}, "body.name"),
    ):
        answer = await api.patch(f"/api/workflows/{workflow_id}", json=bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.json()["issues"][0]["field"] == field, (bad, answer.json())
    assert (
        await api.patch(f"/api/workflows/{workflow_id}", json={"status": "active"}, headers=api.other)
    ).status_code == 404
    assert (await api.patch(f"/api/workflows/{uuid.uuid4()}", json={"status": "active"})).status_code == 404


async def test_archived_refuses_execute_and_pauses_its_schedules_in_prefect_until_active(api):
    workflow_id = await saved(api)
    schedules = f"/api/workflows/{workflow_id}/schedules"
    running = (await api.post(schedules, json={"interval_s": 3600, "inputs": {"who": "a"}})).json()["id"]
    paused_before = (
        await api.post(schedules, json={"interval_s": 7200, "inputs": {"who": "b"}, "active": False})
    ).json()["id"]
    assert await prefect_schedules(api, workflow_id) == {running: True, paused_before: False}
    # Prefect's scheduler makes the active schedule's next runs ahead of time.
    await eventually(lambda: _more_than_none(scheduled_runs(api, workflow_id)), timeout=60, what="scheduled runs")

    archived = await api.patch(f"/api/workflows/{workflow_id}", json={"status": "archived"})
    assert archived.status_code == 200 and archived.json()["status"] == "archived", archived.text
    assert await prefect_schedules(api, workflow_id) == {running: False, paused_before: False}
    assert await scheduled_runs(api, workflow_id) == 0  # Prefect dropped the runs it had made
    listed = {s["id"]: s["active"] for s in (await api.get(schedules)).json()}
    assert listed == {running: False, paused_before: False}

    refused = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "x"}})
    assert refused.status_code == 409 and "archived" in refused.json()["detail"], refused.text
    assert refused.json()["issues"][0]["code"] == "workflow_archived"
    resumed = await api.patch(f"{schedules}/{running}", json={"active": True})
    assert resumed.status_code == 409 and "archived" in resumed.json()["detail"], resumed.text
    assert (await api.get("/api/executions", params={"workflow_id": workflow_id})).json() == []

    active = await api.patch(f"/api/workflows/{workflow_id}", json={"status": "active"})
    assert active.status_code == 200, active.text
    # What the status paused runs again; the one paused by hand stays paused.
    assert await prefect_schedules(api, workflow_id) == {running: True, paused_before: False}
    started = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "x"}})
    assert started.status_code == 202, started.text


async def test_a_draft_runs_by_hand_only_webhooks_are_409(api):
    workflow_id = await saved(api)
    hook = (await api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "ci"})).json()
    schedule = (
        await api.post(f"/api/workflows/{workflow_id}/schedules", json={"interval_s": 3600, "inputs": {"who": "s"}})
    ).json()
    assert (await api.patch(f"/api/workflows/{workflow_id}", json={"status": "draft"})).status_code == 200
    assert await prefect_schedules(api, workflow_id) == {schedule["id"]: False}

    async def deliver() -> Any:
        body = json.dumps({"who": "hook"}).encode()
        now = int(time.time())
        return await api.post(
            hook["url"],
            content=body,
            headers={
                "Authorization": "",
                "X-FlowMaestro-Timestamp": str(now),
                "X-FlowMaestro-Signature": sign(hook["secret"], now, body),
                "content-type": "application/json",
            },
        )

    refused = await deliver()
    assert refused.status_code == 409, refused.text
    assert "draft" in refused.json()["detail"] and "webhook" in refused.json()["detail"]
    by_hand = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "me"}})
    assert by_hand.status_code == 202, by_hand.text
    runs = (await api.get("/api/executions", params={"workflow_id": workflow_id})).json()
    assert [(r["id"], r["trigger"]["type"]) for r in runs] == [(by_hand.json()["execution_id"], "api")]

    assert (await api.patch(f"/api/workflows/{workflow_id}", json={"status": "active"})).status_code == 200
    assert await prefect_schedules(api, workflow_id) == {schedule["id"]: True}
    accepted = await deliver()
    assert accepted.status_code == 202, accepted.text


async def _more_than_none(count: Any) -> bool:
    return await count > 0
