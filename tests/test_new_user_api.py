"""What a new user hit on the API (issue 31, minors 10-14): React Flow exports as they
come, the existing id in a name's 409, an identical save making no version, a reused
Idempotency-Key with other inputs, list limits and dates, messages that do not repeat
their field. The real API (in this process) on the session's Prefect server, no worker:
runs stay pending."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.settings import ApiSettings

KEY = "nu-" + uuid.uuid4().hex


@pytest.fixture
async def api(tmp_path, prefect_server):
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        home=tmp_path,
        api_keys=f"ada:{KEY}",
        work_pool=f"nu-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        ) as client:
            yield client


def react_flow_export() -> dict[str, Any]:
    """What React Flow's ``toObject()`` gives for a small flow drawn with its built-in types."""
    return {
        "nodes": [
            {"id": "in", "type": "input", "position": {"x": 0, "y": 0}, "data": {"label": "In"}},
            {"id": "box", "type": "group", "position": {"x": 0, "y": 50}, "data": {"label": "Box"}},
            {
                "id": "shape",
                "position": {"x": 10, "y": 60},
                "parentId": "box",
                "data": {"output": {"shaped": "{{ inputs.who }}"}},
                "measured": {"width": 150, "height": 40},
            },
            {"id": "out", "type": "output", "position": {"x": 0, "y": 200}, "data": {"output": "{{ shape.shaped }}"}},
        ],
        "edges": [
            {"id": "a", "source": "in", "target": "shape", "type": "smoothstep"},
            {"id": "b", "source": "shape", "target": "out", "animated": True},
        ],
        "viewport": {"x": 12, "y": 4, "zoom": 1.5},
    }


TYPES = {"input": "start", "default": "transform", "output": "end", "group": None}


async def test_a_react_flow_export_is_saved_as_it_comes_with_a_name_and_a_type_map(api):
    name = f"rf-{uuid.uuid4().hex[:6]}"
    bare = await api.post("/api/workflows/validate", json=react_flow_export())
    assert bare.status_code == 200, bare.text
    unknown = sorted(i["node_id"] for i in bare.json()["issues"] if i["code"] == "unknown_node_type")
    assert unknown == ["box", "in", "out"]  # no map: React Flow's types are not ours
    assert any(i["node_id"] == "shape" and i["severity"] == "error" for i in bare.json()["issues"])  # no type
    saved = await api.post("/api/workflows", json={**react_flow_export(), "name": name, "types": TYPES})
    assert saved.status_code == 201, saved.text
    assert saved.json()["name"] == name and saved.json()["version"] == 1
    workflow_id = saved.json()["id"]
    stored = (await api.get(f"/api/workflows/{workflow_id}")).json()["canvas"]
    assert [(n["id"], n["type"]) for n in stored["nodes"]] == [("in", "start"), ("shape", "transform"), ("out", "end")]
    assert "parentId" not in stored["nodes"][1]  # its group was visual only
    run = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "Ada"}})
    assert run.status_code == 202, run.text
    # `name` beside `canvas` too; neither canvas nor nodes, or both, is a 422 naming the body.
    beside = await api.post("/api/workflows/validate", json={"canvas": {"nodes": []}, "name": "x"})
    assert beside.status_code == 200, beside.text
    refused = await api.post("/api/workflows", json={"name": "x"})
    assert refused.status_code == 422, refused.text
    (issue,) = refused.json()["issues"]
    assert issue["field"] == "body" and not issue["message"].startswith("body"), issue


async def test_a_taken_name_409_names_the_workflow_that_has_it(api):
    export = {**react_flow_export(), "types": TYPES}  # no name: both are "workflow"... of this owner
    name = f"dup-{uuid.uuid4().hex[:6]}"
    first = await api.post("/api/workflows", json={**export, "name": name})
    assert first.status_code == 201, first.text
    second = await api.post("/api/workflows", json={**export, "name": name})
    assert second.status_code == 409, second.text
    (issue,) = second.json()["issues"]
    assert (issue["code"], issue["field"], issue["related"]) == ("name_taken", "name", [first.json()["id"]])
    assert first.json()["id"] in second.json()["detail"]


async def test_saving_an_identical_canvas_answers_the_current_version(api):
    body = {**react_flow_export(), "name": f"same-{uuid.uuid4().hex[:6]}", "types": TYPES}
    workflow_id = (await api.post("/api/workflows", json=body)).json()["id"]
    again = await api.put(f"/api/workflows/{workflow_id}", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["version"] == 1
    assert [w["code"] for w in again.json()["warnings"]] == ["unchanged"]
    moved = body | {"viewport": {"x": 99, "y": 0, "zoom": 1}, "nodes": body["nodes"][:-1] + body["nodes"][-1:]}
    moved["nodes"][0] = {**moved["nodes"][0], "position": {"x": 5, "y": 5}}  # layout changed: saved
    changed = await api.put(f"/api/workflows/{workflow_id}", json=moved)
    assert changed.json()["version"] == 2, changed.text
    assert (await api.get(f"/api/workflows/{workflow_id}")).json()["latest_version"] == 2


async def test_an_idempotency_key_reused_with_other_inputs_is_422_naming_them(api):
    body = {**react_flow_export(), "name": f"idem-{uuid.uuid4().hex[:6]}", "types": TYPES}
    workflow_id = (await api.post("/api/workflows", json=body)).json()["id"]
    url, key = f"/api/workflows/{workflow_id}/execute", {"Idempotency-Key": uuid.uuid4().hex}
    first = await api.post(url, json={"inputs": {"who": "Ada"}}, headers=key)
    same = await api.post(url, json={"inputs": {"who": "Ada"}}, headers=key)
    assert (first.status_code, same.status_code) == (202, 202), same.text
    assert same.json()["execution_id"] == first.json()["execution_id"]
    other = await api.post(url, json={"inputs": {"who": "Grace"}}, headers=key)
    assert other.status_code == 422, other.text
    (issue,) = other.json()["issues"]
    assert (issue["code"], issue["field"]) == ("idempotency_mismatch", "inputs.who")
    assert first.json()["execution_id"] in other.json()["detail"]
    runs = (await api.get("/api/executions", params={"workflow_id": workflow_id})).json()
    assert [r["id"] for r in runs] == [first.json()["execution_id"]]


async def test_lists_honour_limit_since_and_until(api):
    body = {**react_flow_export(), "name": f"list-{uuid.uuid4().hex[:6]}", "types": TYPES}
    workflow_id = (await api.post("/api/workflows", json=body)).json()["id"]
    started = []
    for who in ("a", "b", "c"):
        answer = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": who}})
        started.append(answer.json()["execution_id"])  # one after the other: in creation order
    listed = (await api.get("/api/executions", params={"workflow_id": workflow_id})).json()
    assert [r["id"] for r in listed] == started[::-1]
    one = (await api.get("/api/executions", params={"workflow_id": workflow_id, "limit": 1})).json()
    assert [r["id"] for r in one] == [started[-1]]
    middle = listed[1]["created_at"]
    since = (await api.get("/api/executions", params={"workflow_id": workflow_id, "since": middle})).json()
    assert [r["id"] for r in since] == [started[2], started[1]]
    until = (await api.get("/api/executions", params={"workflow_id": workflow_id, "until": middle})).json()
    assert [r["id"] for r in until] == [started[0]]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await api.get("/api/executions", params={"workflow_id": workflow_id, "since": later})).json() == []
    pending = await api.get("/api/executions", params={"workflow_id": workflow_id, "status": "pending", "limit": 2})
    assert [r["id"] for r in pending.json()] == [started[2], started[1]], pending.text
    for params, field in (
        ({"limit": 0}, "query.limit"),
        ({"since": "yesterday"}, "query.since"),
        ({"until": "0.5"}, "query.until"),  # pydantic alone reads a number as seconds since 1970
        ({"until": "2026-01-01"}, "query.until"),
    ):
        refused = await api.get("/api/executions", params=params)
        assert refused.status_code == 422, refused.text
        (issue,) = refused.json()["issues"]
        assert issue["field"] == field and not issue["message"].startswith(field), issue
