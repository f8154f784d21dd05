"""The REST API on the ASGI app, against SQLite and a real PostgreSQL, with the session's
real Prefect server: saved workflows are deployments, and their runs execute on a worker
running in this process (so the test handlers are there too), on a work pool per database."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from functools import partial

import asyncpg
import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings
from tests.support import canvas, hello, node, save, summary_artifact_of, wait_running
from tests.support import wait_final as _wait_final

wait_final = partial(_wait_final, timeout=60)

pytestmark = pytest.mark.prefect

ALICE, BOB = "alice-key", "bob-key"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
async def postgres_url():
    name = f"fm_api_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory):
    return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('api') / 'api.db'}"


@pytest.fixture(scope="module")
async def databases(sqlite_url, postgres_url, prefect_server, in_process_workers):
    """Each database with the work pool its worker polls; workers start on first use."""
    from store.db import upgrade_schema

    pools = {
        "sqlite": (sqlite_url, f"api-sqlite-{uuid.uuid4().hex[:6]}"),
        "postgres": (postgres_url, f"api-postgres-{uuid.uuid4().hex[:6]}"),
    }
    started: set[str] = set()

    async def database(kind: str) -> tuple[str, str]:
        url, pool = pools[kind]
        if kind not in started:
            await upgrade_schema(url)
            await in_process_workers.start(url, pool)
            started.add(kind)
        return url, pool

    return database


@pytest.fixture(params=["sqlite", "postgres"])
async def api(request, tmp_path, databases, test_handlers):
    url, pool = await databases(request.param)
    # Fresh owners per test: each database is shared by the module's tests.
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    settings = ApiSettings(
        database_url=url,
        api_keys=f"{alice}:{ALICE}-{alice},{bob}:{BOB}-{bob}",
        max_request_bytes=200_000,
        home=tmp_path,
        work_pool=pool,
        metrics_public=True,
    )  # /metrics is closed by default (tests/security/test_secrets_hygiene.py)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {ALICE}-{alice}"}
        ) as client:
            client.bob = {"Authorization": f"Bearer {BOB}-{bob}"}
            yield client


async def test_requests_need_a_valid_key(api):
    assert (await api.get("/api/workflows", headers={"Authorization": ""})).status_code == 401
    wrong = await api.get("/api/workflows", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json() == {"detail": "invalid API key", "issues": []}


async def test_workflow_crud_with_versions(api):
    saved = await save(api, hello("crud"), deployed=False)
    assert saved["version"] == 1 and saved["name"] == "crud"
    changed = hello("crud")
    changed["nodes"][1]["data"]["output"] = "Hi {{ inputs.who }}"
    updated = await api.put(f"/api/workflows/{saved['id']}", json={"canvas": changed})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    latest = (await api.get(f"/api/workflows/{saved['id']}")).json()
    first = (await api.get(f"/api/workflows/{saved['id']}", params={"version": 1})).json()
    assert latest["version"] == 2 and latest["canvas"]["nodes"][1]["data"]["output"].startswith("Hi")
    assert first["canvas"]["nodes"][1]["data"]["output"].startswith("Hello")
    assert [w["id"] for w in (await api.get("/api/workflows")).json()] == [saved["id"]]
    assert (await api.get(f"/api/workflows/{saved['id']}", params={"version": 9})).status_code == 404
    assert (await api.delete(f"/api/workflows/{saved['id']}")).status_code == 204
    assert (await api.get(f"/api/workflows/{saved['id']}")).status_code == 404
    assert (await api.get("/api/workflows")).json() == []
    # The name is free again once deleted.
    await save(api, hello("crud"), deployed=False)


async def test_invalid_canvas_is_422_with_every_issue(api):
    bad = {
        "name": "bad",
        "nodes": [{"id": "a", "type": "nope"}, {"id": "b", "type": "transform"}],
        "edges": [{"id": "e", "source": "a", "target": "ghost"}],
    }
    response = await api.post("/api/workflows", json={"canvas": bad})
    assert response.status_code == 422
    codes = sorted(i["code"] for i in response.json()["issues"] if i["severity"] == "error")
    assert codes == ["dangling_edge", "invalid_config", "unknown_node_type"]


async def test_validate_does_not_save(api):
    report = (await api.post("/api/workflows/validate", json={"canvas": hello()})).json()
    assert report["valid"] is True and report["plan"]["hash"]
    assert (await api.get("/api/workflows")).json() == []


async def test_duplicate_name_is_409(api):
    await save(api, hello("same"), deployed=False)
    response = await api.post("/api/workflows", json={"canvas": hello("same")})
    assert response.status_code == 409 and "already exists" in response.json()["detail"]


async def test_another_owners_ids_are_404(api):
    saved = await save(api, hello(), deployed=False)
    bob = api.bob
    assert (await api.get(f"/api/workflows/{saved['id']}", headers=bob)).status_code == 404
    assert (await api.delete(f"/api/workflows/{saved['id']}", headers=bob)).status_code == 404
    assert (
        await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}}, headers=bob)
    ).status_code == 404
    assert (await api.get("/api/workflows", headers=bob)).json() == []


async def test_malformed_requests_are_4xx_not_500(api):
    response = await api.post("/api/workflows", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["issues"]
    missing = await api.post("/api/workflows", json={"canvas_typo": {}})
    # Neither a canvas nor a document's nodes: the body is what is wrong, and the message says both ways.
    issue = missing.json()["issues"][0]
    assert missing.status_code == 422 and issue["field"] == "body" and "'canvas'" in issue["message"], issue
    huge = await api.post("/api/workflows", json={"canvas": {"name": "x" * 300_000}})
    assert huge.status_code == 413
    assert (await api.get("/api/executions/not-a-run")).status_code == 404


async def test_health_and_metrics(api, tmp_path):
    health = await api.get("/health")
    assert health.json()["checks"]["database"] == "ok"
    # The session's Prefect server is not one this home started: its database is unknown.
    assert health.json()["prefect_database"] == "unknown" and "warnings" not in health.json()
    # As if the embedded server of this home (the API's) were the one in use, on SQLite.
    started = {"api_url": os.environ["PREFECT_API_URL"], "pid": 1, "auth": False, "database": "sqlite"}
    (tmp_path / "prefect-server.json").write_text(json.dumps(started))
    on_sqlite = (await api.get("/health")).json()
    assert on_sqlite["prefect_database"] == "sqlite" and "Prefect runs on SQLite" in on_sqlite["warnings"][0]
    metrics = await api.get("/metrics")
    assert "flowmaestro_runs_started_total" in metrics.text


@pytest.mark.prefect
async def test_execute_and_read_the_result(api, prefect_server):
    saved = await save(api, hello(), deployed=False)
    bad = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": 5}})
    assert bad.status_code == 422 and bad.json()["issues"][0]["field"] == "inputs.who"
    started = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "Ada"}})
    assert started.status_code == 202
    accepted = started.json()
    # No FLOWMAESTRO_PREFECT_PUBLIC_URL: the answer gives out no Prefect address (issue 30).
    assert set(accepted["links"]) == {"self", "stream"} and prefect_server.api_url.split("/api")[0] not in started.text
    result = await wait_final(api, accepted["execution_id"])
    assert result["status"] == "completed" and result["output"] == "Hello Ada"
    assert result["nodes"]["greet"]["status"] == "completed"
    listed = (await api.get("/api/executions", params={"workflow_id": saved["id"]})).json()
    assert [e["id"] for e in listed] == [accepted["execution_id"]]
    assert (await api.get("/api/executions", params={"status": "failed"})).json() == []
    assert (await api.get(f"/api/executions/{accepted['execution_id']}", headers=api.bob)).status_code == 404
    metrics = (await api.get("/metrics")).text
    assert 'flowmaestro_runs_finished_total{status="completed"' in metrics
    # the Prefect UI's summary artifact links back to the run here
    # The execution id is the API's own; the flow run has its id and is named in the result.
    assert result["flow_run_id"] and result["flow_run_id"] != accepted["execution_id"]
    summary = await summary_artifact_of(result["flow_run_id"])
    assert f"/ui/executions/{accepted['execution_id']})" in summary
    assert f"/api/executions/{accepted['execution_id']})" in summary


@pytest.mark.prefect
async def test_cancel_a_running_execution(api, prefect_server):
    raw = canvas([node("slow", "test_sleep", data={"seconds": 60}), node("after")], [("slow", "after")])
    saved = await save(api, raw, deployed=False)
    execution_id = (await api.post(f"/api/workflows/{saved['id']}/execute", json={})).json()["execution_id"]
    # Running for sure (a worker took it and its node started): a run still scheduled would
    # be cancelled too, by another path, and the test would pass without cancelling a run.
    running = await wait_running(api, execution_id, "slow")
    assert running["status"] == "running" and running["nodes"]["slow"]["status"] == "running"
    assert (await api.post(f"/api/executions/{execution_id}/cancel")).status_code == 202
    result = await wait_final(api, execution_id)
    assert result["status"] == "cancelled"
    assert result["nodes"]["slow"]["status"] == "cancelled", result
    assert result["nodes"].get("after", {}).get("status") != "completed", result
    assert (await api.post(f"/api/executions/{execution_id}/cancel")).status_code == 409


@pytest.mark.prefect
async def test_resume_an_approval_through_the_api(api, prefect_server):
    raw = canvas(
        [
            node("ask", "approval", data={"form": {"reason": {"type": "string", "required": True}}}),
            node("yes", data={"output": "{{ ask.input.reason }}"}),
        ],
        [("ask", "yes", "approved")],
    )
    saved = await save(api, raw, deployed=False)
    execution_id = (await api.post(f"/api/workflows/{saved['id']}/execute", json={})).json()["execution_id"]
    # The approval is announced, then Prefect's pause starts. The node's state comes from the
    # event log, whose writer may store the node's pause after Prefect's (seen once under load).
    for _ in range(150):
        body = (await api.get(f"/api/executions/{execution_id}")).json()
        if (
            body["pending_approvals"]
            and body["status"] == "paused"
            and body["nodes"].get("ask", {}).get("status") == "paused"
        ):
            break
        await asyncio.sleep(0.2)
    assert body["pending_approvals"][0]["node_id"] == "ask"
    assert body["status"] == "paused"
    assert body["nodes"]["ask"]["status"] == "paused"  # node states of a live run, from its event log
    paused = (await api.get("/api/executions", params={"status": "paused"})).json()
    assert [e["id"] for e in paused] == [execution_id]
    refused = await api.post(
        f"/api/executions/{execution_id}/resume", json={"node_id": "ask", "input": {"approved": True}}
    )
    assert refused.status_code == 422 and "reason" in refused.json()["detail"]
    nobody = await api.post(f"/api/executions/{execution_id}/resume", json={"node_id": "nobody", "input": {}})
    assert nobody.status_code == 409
    accepted = await api.post(
        f"/api/executions/{execution_id}/resume", json={"node_id": "ask", "input": {"approved": True, "reason": "ok"}}
    )
    assert accepted.status_code == 200 and accepted.json()["status"] == "accepted"
    result = await wait_final(api, execution_id)
    assert result["output"] == {"yes": "ok"}
    again = await api.post(
        f"/api/executions/{execution_id}/resume",
        json={"node_id": "ask", "input": {"approved": True, "reason": "twice"}},
    )
    assert again.status_code == 409


async def test_saving_a_cycle_between_saved_workflows_is_refused_naming_it(api):
    first = await save(api, hello("first"), deployed=False)
    calls_first = canvas(
        [node("start", "start"), node("call", "subworkflow", data={"workflow": first["id"]})],
        [("start", "call")],
        name="second",
    )
    second = await save(api, calls_first, deployed=False)
    calls_second = canvas(
        [node("start", "start"), node("call", "subworkflow", data={"workflow": second["id"]})],
        [("start", "call")],
        name="first",
    )
    refused = await api.put(f"/api/workflows/{first['id']}", json={"canvas": calls_second})
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["detail"] == f"sub-workflow cycle: {first['id']} -> {second['id']} -> {first['id']}"
    assert body["issues"][0]["code"] == "subworkflow_cycle"
    assert (await api.get(f"/api/workflows/{first['id']}")).json()["latest_version"] == 1  # nothing saved


def test_cors_origins_read_as_a_list_or_json():
    assert ApiSettings(cors_origins="https://a.example, https://b.example").cors_origins == [
        "https://a.example",
        "https://b.example",
    ]
    assert ApiSettings(cors_origins='["https://a.example"]').cors_origins == ["https://a.example"]


async def test_a_chunked_body_over_the_limit_answers_413(api):
    async def chunks():
        for _ in range(30):
            yield b'{"canvas": {"name": "' + b"x" * 9_000  # 270 kB in all, no Content-Length

    answer = await api.post("/api/workflows", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert answer.json() == {"detail": "request body larger than 200000 bytes", "issues": []}


async def test_execute_with_the_same_idempotency_key_starts_one_run(api):
    saved = await save(api, hello(), deployed=False)
    headers = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    first = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "A"}}, headers=headers)
    again = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "A"}}, headers=headers)
    other = await api.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {"who": "A"}})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["execution_id"] == again.json()["execution_id"] != other.json()["execution_id"]
    await wait_final(api, first.json()["execution_id"])
    listed = (await api.get("/api/executions", params={"workflow_id": saved["id"]})).json()
    assert len(listed) == 2
