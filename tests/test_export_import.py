"""Export and import of workflow bundles, on SQLite and PostgreSQL with the session's Prefect
server (schedules are Prefect's; a save is a deployment): an import of an export reproduces
the workflow (the same plan hashes, version by version), secrets are never exported,
references between the bundle's workflows are rewritten, and an import that fails leaves
nothing. The command line's export/import of all an owner's workflows, through a running API."""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from api.app import create_app
from api.settings import ApiSettings
from cli.main import app as cli
from store.db import make_engine, sessions
from store.errors import Conflict
from store.library import NewVersion, NewWorkflow, WorkflowHistory
from tests.processes import free_port
from tests.support import canvas, hello, node, save

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_KEY = "export-import-" + uuid.uuid4().hex
TOKEN = "tok-" + uuid.uuid4().hex  # a credential's value: in no export


@pytest.fixture(scope="module")
async def databases(tmp_path_factory):
    name = f"fm_bundles_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    from store.db import upgrade_schema

    urls = {
        "sqlite": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('bundles') / 'store.db'}",
        "postgres": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
    }
    for url in urls.values():
        await upgrade_schema(url)
    yield urls
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def api(request, databases, prefect_server, tmp_path):
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    settings = ApiSettings(
        database_url=databases[request.param],
        api_keys=f"{alice}:key-{alice},{bob}:key-{bob}",
        home=tmp_path,
        work_pool=f"bundles-{uuid.uuid4().hex[:6]}",
        secret_key=SECRET_KEY,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer key-{alice}"},
            timeout=60,
        ) as client:
            client.url = databases[request.param]  # type: ignore[attr-defined]
            client.bob = {"Authorization": f"Bearer key-{bob}"}  # type: ignore[attr-defined]
            yield client


def fetching(name: str) -> dict[str, Any]:
    """A workflow whose http node uses a stored credential."""
    return canvas(
        [
            node("start", "start"),
            node("get", "http", data={"url": "https://api.example.com/x", "credential": "api"}),
            node("end", "end", data={"output": "{{ get.status }}"}),
        ],
        [("start", "get"), ("get", "end")],
        name=name,
        inputs={"who": {"type": "string", "default": "Ada"}},
    )


async def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


async def test_an_import_of_an_export_reproduces_the_workflow_without_secrets(api) -> None:
    await ok(await api.post("/api/credentials", json={"name": "api", "type": "bearer", "data": {"token": TOKEN}}), 201)
    v1 = fetching(f"fetching-{uuid.uuid4().hex[:6]}")
    wid = (await save(api, v1))["id"]
    v2 = copy.deepcopy(v1)
    v2["nodes"][2]["data"]["output"] = "{{ get.body }}"
    await ok(await api.put(f"/api/workflows/{wid}", json={"canvas": v2}))
    schedule = {"interval_s": 3600, "active": False, "inputs": {"who": "Grace"}, "overlap": "skip"}
    await ok(await api.post(f"/api/workflows/{wid}/schedules", json=schedule), 201)
    hook = await ok(await api.post(f"/api/workflows/{wid}/webhooks", json={"name": "push"}), 201)
    await ok(await api.patch(f"/api/workflows/{wid}", json={"description": "fetches", "tags": ["io", "daily"]}))

    exported = await api.get(f"/api/workflows/{wid}/export")
    bundle = await ok(exported)
    for secret in (TOKEN, hook["secret"], SECRET_KEY):
        assert secret not in exported.text
    (workflow,) = bundle["workflows"]
    assert workflow["id"] == wid and [v["version"] for v in workflow["versions"]] == [1, 2]
    assert [v["canvas"] for v in workflow["versions"]] == [v1, v2]
    assert workflow["schedules"] == [
        {"cron": None, "interval_s": 3600.0, "rrule": None, "timezone": "UTC", "inputs": {"who": "Grace"},
         "active": False, "overlap": "skip"}
    ]  # fmt: skip
    assert workflow["webhooks"] == [{"name": "push", "verification": None, "inputs_map": None}]
    versions = await ok(await api.get(f"/api/workflows/{wid}/versions"))

    imported = await ok(await api.post("/api/workflows/import", json=bundle, headers=api.bob), 201)
    (made,) = imported["workflows"]
    assert made["source_id"] == wid and made["id"] != wid and imported["id"] == made["id"]
    assert made["plan_hashes"] == [v["plan_hash"] for v in versions]
    assert made["schedules"] == 1 and made["webhooks"][0]["name"] == "push"
    assert made["webhooks"][0]["secret"] != hook["secret"]
    assert not [w for w in imported["warnings"] if w["code"] in ("plan_changed", "schedule_not_imported")]
    # bob has no credential "api": the save warns, as a save of that canvas would
    assert any(w["code"] == "missing_credential" for w in imported["warnings"])
    theirs = await ok(await api.get(f"/api/workflows/{made['id']}/versions", headers=api.bob))
    assert [v["plan_hash"] for v in theirs] == [v["plan_hash"] for v in versions]
    read = await ok(await api.get(f"/api/workflows/{made['id']}", params={"version": 1}, headers=api.bob))
    assert read["canvas"] == v1
    assert (read["description"], sorted(read["tags"]), read["status"]) == ("fetches", ["daily", "io"], "active")
    (their_schedule,) = await ok(await api.get(f"/api/workflows/{made['id']}/schedules", headers=api.bob))
    assert (their_schedule["interval_s"], their_schedule["active"], their_schedule["overlap"]) == (
        3600.0,
        False,
        "skip",
    )
    assert their_schedule["inputs"] == {"who": "Grace"}

    # The same bundle again, for the owner who has that name: 409, or a new name.
    again = await api.post("/api/workflows/import", json=bundle)
    assert again.status_code == 409 and again.json()["issues"][0]["field"] == "name"
    renamed = await ok(await api.post("/api/workflows/import", json={**bundle, "name": v1["name"] + "-copy"}), 201)
    assert renamed["name"] == v1["name"] + "-copy"


async def test_references_between_the_workflows_of_a_bundle_are_rewritten(api) -> None:
    child_id, parent_id = str(uuid.uuid4()), str(uuid.uuid4())
    child = hello(f"child-{uuid.uuid4().hex[:6]}")
    parent = canvas(
        [
            node("start", "start"),
            node("sub", "subworkflow", data={"workflow": child_id, "version": 1, "inputs": {"who": "x"}}),
            node("end", "end", data={"output": "{{ sub }}"}),
        ],
        [("start", "sub"), ("sub", "end")],
        name=f"parent-{uuid.uuid4().hex[:6]}",
    )
    bundle = {
        "workflows": [
            {"id": parent_id, "name": parent["name"], "versions": [{"version": 1, "canvas": parent}]},
            {"id": child_id, "name": child["name"], "versions": [{"version": 1, "canvas": child}]},
        ]
    }
    imported = await ok(await api.post("/api/workflows/import", json=bundle), 201)
    made = {w["source_id"]: w["id"] for w in imported["workflows"]}
    assert imported["id"] == made[parent_id]
    read = await ok(await api.get(f"/api/workflows/{made[parent_id]}"))
    sub = next(n for n in read["canvas"]["nodes"] if n["id"] == "sub")
    assert sub["data"] == {"workflow": made[child_id], "version": 1, "inputs": {"who": "x"}}
    # exported again, the reference names the new child
    again = await ok(await api.get(f"/api/workflows/{made[parent_id]}/export"))
    assert made[child_id] in json.dumps(again) and child_id not in json.dumps(again)


async def test_an_import_that_fails_leaves_nothing(api) -> None:
    before = {w["id"] for w in await ok(await api.get("/api/workflows", headers=api.bob))}
    good, other = hello(f"good-{uuid.uuid4().hex[:6]}"), hello(f"other-{uuid.uuid4().hex[:6]}")
    broken = copy.deepcopy(other)
    broken["edges"].append({"id": "dangling", "source": "greet", "target": "nowhere"})
    bundle = {
        "workflows": [
            {"id": "a", "name": good["name"], "versions": [{"version": 1, "canvas": good}]},
            {"id": "b", "name": other["name"],
             "versions": [{"version": 1, "canvas": other}, {"version": 2, "canvas": broken}]},
        ]
    }  # fmt: skip
    refused = await api.post("/api/workflows/import", json=bundle, headers=api.bob)
    assert refused.status_code == 422, refused.text
    assert "body.workflows[1]" in refused.json()["detail"] and "version 2" in refused.json()["detail"]
    assert any(i.get("edge_id") == "dangling" for i in refused.json()["issues"])

    taken = await save(api, hello(f"taken-{uuid.uuid4().hex[:6]}"), deployed=False)
    clash = copy.deepcopy(bundle)
    clash["workflows"][1] = {
        "id": "b",
        "name": taken["name"],
        "versions": [{"version": 1, "canvas": hello(taken["name"])}],
    }
    conflict = await api.post("/api/workflows/import", json=clash)
    assert conflict.status_code == 409 and taken["name"] in conflict.text

    for body, field in (
        ({"workflows": []}, "workflows"),
        ({"workflows": [{"id": "a", "name": "n", "versions": [{"version": 2, "canvas": good}]}]}, "versions"),
        ({**bundle, "name": "one name for two"}, "body.name"),
        ({"format": "zip", "workflows": bundle["workflows"]}, "format"),
    ):
        answer = await api.post("/api/workflows/import", json=body, headers=api.bob)
        assert answer.status_code == 422 and field in answer.text, (body, answer.text)
    after = {w["id"] for w in await ok(await api.get("/api/workflows", headers=api.bob))}
    assert after == before
    mine = {w["name"] for w in await ok(await api.get("/api/workflows"))}
    assert good["name"] not in mine


async def test_the_store_creates_a_bundle_in_one_transaction(api) -> None:
    """A failure inside the transaction (here: two workflows with one id, refused by the
    database at the second insert) rolls back the first too."""
    engine = make_engine(api.url)
    try:
        history = WorkflowHistory(sessions(engine))
        owner, same = f"tx-{uuid.uuid4().hex}", str(uuid.uuid4())
        first, second = hello("first"), hello("second")
        with pytest.raises(Conflict):
            await history.create_all(
                owner,
                [
                    NewWorkflow("first", (NewVersion(first, "h1"),), id=same),
                    NewWorkflow("second", (NewVersion(second, "h2"),), id=same),
                ],
            )
        from store.queries import Workflows

        assert list(await Workflows(sessions(engine)).list(owner)) == []
        await history.create_all(owner, [NewWorkflow("first", (NewVersion(first, "h1"), NewVersion(second, "h2")))])
        (made,) = await Workflows(sessions(engine)).list(owner)
        assert made.latest_version == 2
        assert [v.plan_hash for v in await history.versions(owner, made.id)] == ["h1", "h2"]
    finally:
        await engine.dispose()


# --- the command line --------------------------------------------------------------------

KEY, OTHER = "cli-" + uuid.uuid4().hex, "cli-other-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def api_url(prefect_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-bundles")
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{home / 'api.db'}",
        api_keys=f"cli:{KEY},other:{OTHER}",
        home=home,
        work_pool=f"cli-bundles-{uuid.uuid4().hex[:6]}",
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_export_and_import_every_workflow_from_the_command_line(api_url, tmp_path) -> None:
    def run(key: str, *args: str) -> Any:
        result = CliRunner().invoke(cli, list(args), env={"FLOWMAESTRO_API_URL": api_url, "FLOWMAESTRO_API_KEY": key})
        return result

    headers = {"Authorization": f"Bearer {KEY}"}
    child = httpx.post(f"{api_url}/api/workflows", json={"canvas": hello("cli-child")}, headers=headers, timeout=60)
    parent = canvas(
        [
            node("start", "start"),
            node("sub", "subworkflow", data={"workflow": child.json()["id"], "inputs": {"who": "x"}}),
            node("end", "end", data={"output": "{{ sub }}"}),
        ],
        [("start", "sub"), ("sub", "end")],
        name="cli-parent",
    )
    made = httpx.post(f"{api_url}/api/workflows", json={"canvas": parent}, headers=headers, timeout=60)
    assert made.status_code == 201, made.text

    out = tmp_path / "bundle.json"
    exported = run(KEY, "export", "--out", str(out))
    assert exported.exit_code == 0, exported.stderr
    bundle = json.loads(out.read_text())
    assert {w["name"] for w in bundle["workflows"]} == {"cli-child", "cli-parent"}

    imported = run(OTHER, "import", str(out))
    assert imported.exit_code == 0, imported.stderr
    answer = json.loads(imported.stdout)
    new = {w["name"]: w for w in answer["workflows"]}
    theirs = {"Authorization": f"Bearer {OTHER}"}
    read = httpx.get(f"{api_url}/api/workflows/{new['cli-parent']['id']}", headers=theirs, timeout=60).json()
    assert read["canvas"]["nodes"][1]["data"]["workflow"] == new["cli-child"]["id"]
    source = {w["name"]: w for w in bundle["workflows"]}
    assert new["cli-child"]["plan_hashes"] == [v["plan_hash"] for v in source["cli-child"]["versions"]]

    again = run(OTHER, "import", str(out))  # the names are taken now: refused, nothing made
    assert again.exit_code == 2 and "409" in again.stderr
    listed = httpx.get(f"{api_url}/api/workflows", headers=theirs, timeout=60).json()
    assert sorted(w["name"] for w in listed) == ["cli-child", "cli-parent"]
    missing = run(OTHER, "import", str(tmp_path / "missing.json"))
    assert missing.exit_code == 2
