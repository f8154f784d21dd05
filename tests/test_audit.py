"""The audit log of a workflow's whole life, through the API, on SQLite and PostgreSQL, with
the session's real Prefect server and a worker in this process (the approval is answered on a
run that really waits for it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from store.audit import ACTIONS
from tests.manage_support import api_client, every_page, scratch_postgres
from tests.support import canvas, eventually, node, wait_final

pytestmark = pytest.mark.prefect

TOKEN, ROTATED = "tok-" + uuid.uuid4().hex, "tok-" + uuid.uuid4().hex


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def api(request, tmp_path_factory, prefect_server, in_process_workers):
    home = tmp_path_factory.mktemp(f"audit-{request.param}")
    pool = f"audit-{request.param}-{uuid.uuid4().hex[:6]}"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{home / 'store.db'}"
        async with api_client(url, home, pool) as client:
            await in_process_workers.start(url, pool)
            yield client
    else:
        async with scratch_postgres("fm_audit") as url, api_client(url, home, pool) as client:
            await in_process_workers.start(url, pool)
            yield client


def approval_canvas(name: str, output: str = "yes") -> dict:
    return canvas(
        [
            node("ask", "approval", data={"form": {"comment": {"type": "string"}}}),
            node("done", data={"output": output}),
        ],
        [("ask", "done", "approved")],
        name=name,
    )


async def paused(api, execution_id: str) -> None:
    for _ in range(300):
        body = (await api.get(f"/api/executions/{execution_id}")).json()
        if body["pending_approvals"] and body["status"] == "paused":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {execution_id} never waited for its approval: {body}")


async def ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def test_every_change_of_a_lifecycle_is_recorded_newest_first_without_secrets(api):
    name = f"audited-{uuid.uuid4().hex[:8]}"
    expected: list[tuple[str, str]] = []  # (action, target id), oldest first

    workflow_id = (await ok(await api.post("/api/workflows", json={"canvas": approval_canvas(name)}), 201))["id"]
    expected.append(("workflow.create", workflow_id))
    # A save refused (the name is taken) records nothing: the entry went with its transaction.
    await ok(await api.post("/api/workflows", json={"canvas": approval_canvas(name)}), 409)
    await ok(await api.put(f"/api/workflows/{workflow_id}", json={"canvas": approval_canvas(name, "sure")}))
    expected.append(("workflow.save", workflow_id))
    await ok(await api.patch(f"/api/workflows/{workflow_id}", json={"tags": ["audited"], "description": "d"}))
    expected.append(("workflow.update", workflow_id))

    once = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    approved = (await ok(await api.post(f"/api/workflows/{workflow_id}/execute", json={}, headers=once), 202))[
        "execution_id"
    ]
    expected.append(("execution.start", approved))
    # The same request again answers the same run and records nothing new.
    replayed = await ok(await api.post(f"/api/workflows/{workflow_id}/execute", json={}, headers=once), 202)
    assert replayed["execution_id"] == approved
    await paused(api, approved)
    resume = {"node_id": "ask", "input": {"approved": True, "comment": TOKEN}}
    await ok(await api.post(f"/api/executions/{approved}/resume", json=resume))
    expected.append(("approval.decide", approved))
    assert (await wait_final(api, approved, timeout=60))["output"] == {"done": "sure"}

    cancelled = (await ok(await api.post(f"/api/workflows/{workflow_id}/execute", json={}), 202))["execution_id"]
    expected.append(("execution.start", cancelled))
    await paused(api, cancelled)
    await ok(await api.post(f"/api/executions/{cancelled}/cancel"), 202)
    expected.append(("execution.cancel", cancelled))
    assert (await wait_final(api, cancelled, timeout=60))["status"] == "cancelled"

    async def retried() -> bool:
        # The store says cancelled once the worker stored the result; Prefect's Cancelled
        # follows when the flow run ends (a 409 until then, which changes nothing).
        answer = await api.post(f"/api/executions/{cancelled}/retry", json={})
        assert answer.status_code in (202, 409), answer.text
        return answer.status_code == 202

    await eventually(retried, timeout=60, what="the cancelled run retried")
    expected.append(("execution.retry", cancelled))

    credential = await ok(
        await api.post("/api/credentials", json={"name": f"c-{name}", "type": "bearer", "data": {"token": TOKEN}}), 201
    )
    expected.append(("credential.create", credential["id"]))
    await ok(await api.put(f"/api/credentials/{credential['id']}", json={"data": {"token": ROTATED}}))
    expected.append(("credential.rotate", credential["id"]))

    schedules = f"/api/workflows/{workflow_id}/schedules"
    schedule = await ok(await api.post(schedules, json={"interval_s": 3600, "active": False}), 201)
    expected.append(("schedule.create", schedule["id"]))
    await ok(await api.patch(f"{schedules}/{schedule['id']}", json={"interval_s": 7200}))
    expected.append(("schedule.update", schedule["id"]))

    hook = await ok(await api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "ci"}), 201)
    expected.append(("webhook.create", hook["id"]))
    rotated = await ok(await api.post(f"/api/workflows/{workflow_id}/webhooks/{hook['id']}/rotate"))
    expected.append(("webhook.rotate", hook["id"]))
    back = await ok(await api.post(f"/api/workflows/{workflow_id}/rollback", json={"version": 1}), 201)
    expected += [("workflow.save", workflow_id), ("workflow.rollback", workflow_id)]

    await ok(await api.delete(f"/api/credentials/{credential['id']}"), 204)
    expected.append(("credential.delete", credential["id"]))
    await ok(await api.delete(f"/api/workflows/{workflow_id}"), 204)
    expected.append(("workflow.delete", workflow_id))

    pages = await every_page(api, "/api/audit", limit=4)
    entries = [entry for page in pages for entry in page]
    assert [(e["action"], e["target_id"]) for e in entries] == expected[::-1]
    assert {e["actor"] for e in entries} == {api.owner}
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    assert {e["action"] for e in entries} <= ACTIONS
    text = str(entries)
    for secret in (TOKEN, ROTATED, hook["secret"], rotated["secret"]):
        assert secret not in text
    by_action = {e["action"]: e for e in entries}
    assert by_action["workflow.update"]["details"]["tags"] == {"from": [], "to": ["audited"]}
    assert by_action["workflow.save"]["details"]["version"] == 2
    assert by_action["approval.decide"]["details"] == {
        "node_id": "ask",
        "path": [],
        "approved": True,
        "answer": "accepted",
    }
    assert by_action["credential.rotate"]["details"] == {"name": f"c-{name}", "type": "bearer", "fields": ["token"]}
    assert by_action["schedule.update"]["details"]["changed"] == ["interval_s"]
    assert by_action["workflow.rollback"]["details"] == {"to_version": 1, "version": back["version"]}

    # Filters
    about = [(e["action"]) for e in (await api.get("/api/audit", params={"target_id": workflow_id})).json()]
    assert about == [
        "workflow.delete",
        "workflow.rollback",
        "workflow.save",
        "workflow.update",
        "workflow.save",
        "workflow.create",
    ]
    starts = (await api.get("/api/audit", params={"action": "execution.start"})).json()
    assert [e["target_id"] for e in starts] == [cancelled, approved]
    since = entries[2]["at"]
    assert [e["id"] for e in (await api.get("/api/audit", params={"since": since})).json()] == [
        e["id"] for e in entries[:3]
    ]
    unknown = await api.get("/api/audit", params={"action": "workflow.renamed"})
    assert unknown.status_code == 422 and unknown.json()["issues"][0]["field"] == "query.action"
    # Another owner's log is its own; no route changes or deletes an entry.
    assert (await api.get("/api/audit", headers=api.other)).json() == []
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert (await api.request(method, "/api/audit")).status_code == 405
        assert (await api.request(method, f"/api/audit/{entries[0]['id']}")).status_code in (404, 405)


async def test_a_run_the_prefect_ui_starts_of_an_archived_workflow_is_refused_by_its_worker(api):
    """Prefect's Run button is outside the API: the worker applies the status rules to a new run."""
    from prefect.client.orchestration import get_client

    from deployments.workflow_deployments import FLOW_NAME, deployment_name

    name = f"archived-{uuid.uuid4().hex[:8]}"
    workflow_id = (await ok(await api.post("/api/workflows", json={"canvas": approval_canvas(name)}), 201))["id"]
    await ok(await api.patch(f"/api/workflows/{workflow_id}", json={"status": "archived"}))
    async with get_client() as prefect:
        deployment = await prefect.read_deployment_by_name(f"{FLOW_NAME}/{deployment_name(workflow_id, name)}")
        flow_run = await prefect.create_flow_run_from_deployment(deployment.id)
    refused = await wait_final(api, str(flow_run.id), timeout=120)
    assert refused["status"] == "failed", refused
    assert refused["trigger"]["type"] == "prefect-ui"
    assert refused["error"]["type"] == "workflow_archived", refused["error"]
    assert refused["nodes"] == {} or all(n["status"] != "completed" for n in refused["nodes"].values())
