"""Versions, diff and rollback.

The structural diff (``builder.diff``) is a pure function: checked with hypothesis (a
canvas against itself is no change; the changes it lists, applied, give the other canvas;
drawing keys are never changes) and on the bundled templates' version pairs (each template
against an edited copy, with the edits a frontend makes). The routes run on SQLite and
PostgreSQL with the session's Prefect server (a save is a deployment)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.app import create_app
from api.settings import ApiSettings
from api.template_library import bundled
from builder.diff import apply_changes, changes, diff_canvases, is_empty
from tests.support import canvas, hello, node, save

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# JSON without nulls (the diff reads None as absent) and with plain keys (paths are dotted).
keys = st.text("abcdefgh_", min_size=1, max_size=6)
leaves = st.booleans() | st.integers(-5, 5) | st.text("xyz", max_size=3) | st.floats(-2, 2, allow_nan=False)
values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=10
)


@st.composite
def canvases(draw: st.DrawFn) -> dict[str, Any]:
    node_ids = draw(st.lists(keys, max_size=5, unique=True))
    nodes = [
        {
            "id": i,
            "type": draw(st.sampled_from(["transform", "http", "llm"])),
            "data": draw(st.dictionaries(keys, values, max_size=3)),
            "position": {"x": draw(st.integers(0, 500)), "y": draw(st.integers(0, 500))},
        }
        for i in node_ids
    ]
    pairs = (
        draw(st.lists(st.tuples(st.sampled_from(node_ids), st.sampled_from(node_ids)), max_size=4)) if node_ids else []
    )
    edges = [{"id": f"e{a}-{b}", "source": a, "target": b, "animated": draw(st.booleans())} for a, b in pairs]
    return {
        "name": draw(keys),
        "nodes": nodes,
        "edges": list({e["id"]: e for e in edges}.values()),
        "inputs": draw(st.dictionaries(keys, st.fixed_dictionaries({"type": st.just("string")}), max_size=2)),
        "settings": draw(st.dictionaries(st.sampled_from(["max_concurrency", "on_error"]), leaves, max_size=2)),
        "output": draw(values),
    }


def test_a_canvas_against_itself_is_no_change() -> None:
    @FAST
    @given(canvases())
    def check(doc: dict[str, Any]) -> None:
        assert is_empty(diff_canvases(doc, copy.deepcopy(doc)))

    check()


def same(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same, leaf by leaf: ``True`` is not ``1``, nor ``1``
    ``1.0`` (Python's ``==`` says they are, even inside lists and dicts)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def test_the_changes_applied_give_the_other_value() -> None:
    @FAST
    @given(values, values)
    def check(a: Any, b: Any) -> None:
        found = changes(a, b)
        assert (found == []) == same(a, b)
        assert same(apply_changes(a, found), b)

    check()


def test_a_change_of_type_inside_a_list_is_a_change() -> None:
    assert changes([True, True, True], [True, True, 1]) == [{"path": "[2]", "from": True, "to": 1}]
    assert changes({"a": [1]}, {"a": [1.0]}) == [{"path": "a[0]", "from": 1, "to": 1.0}]
    assert not same([True], [1]) and same({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]})


def test_node_changes_applied_give_the_other_canvas_and_diffs_are_symmetric() -> None:
    @FAST
    @given(canvases(), canvases())
    def check(a: dict[str, Any], b: dict[str, Any]) -> None:
        forward, backward = diff_canvases(a, b), diff_canvases(b, a)
        for part in ("nodes", "edges", "inputs"):
            assert forward[part]["added"] == backward[part]["removed"]
            assert forward[part]["removed"] == backward[part]["added"]
            assert [c["id"] for c in forward[part]["changed"]] == [c["id"] for c in backward[part]["changed"]]
        a_nodes = {n["id"]: {k: v for k, v in n.items() if k not in ("id", "position")} for n in a["nodes"]}
        b_nodes = {n["id"]: {k: v for k, v in n.items() if k not in ("id", "position")} for n in b["nodes"]}
        for changed in forward["nodes"]["changed"]:
            assert apply_changes(a_nodes[changed["id"]], changed["changes"]) == b_nodes[changed["id"]]
        unchanged = set(a_nodes) & set(b_nodes) - {c["id"] for c in forward["nodes"]["changed"]}
        assert all(a_nodes[i] == b_nodes[i] for i in unchanged)

    check()


def test_drawing_keys_are_never_changes() -> None:
    @FAST
    @given(canvases(), st.integers(1, 900), st.booleans())
    def check(doc: dict[str, Any], shift: int, selected: bool) -> None:
        moved = copy.deepcopy(doc)
        for n in moved["nodes"]:
            n["position"] = {"x": n["position"]["x"] + shift, "y": 0}
            n.update(selected=selected, width=shift, height=shift, measured={"width": shift})
        for e in moved["edges"]:
            e.update(animated=not e["animated"], selected=selected, style={"stroke": "red"})
        assert is_empty(diff_canvases(doc, moved))

    check()


def _edited(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template as a frontend edits it: every node moved, the first non-start node's
    label changed and a field added, an edge removed and one added, an input added, the
    settings changed. Returns (the edited canvas, what the diff must say)."""
    after = copy.deepcopy(template)
    for n in after["nodes"]:
        n["position"] = {"x": n["position"]["x"] + 40, "y": n["position"]["y"] - 10}
        n["selected"] = True
    target = next(n for n in after["nodes"] if n["type"] not in ("start", "end"))
    old_label = target["data"].get("label")
    target["data"]["label"] = "Edited"
    target["data"]["description"] = "why it changed"
    removed = after["edges"].pop()
    after["edges"].append({**removed, "id": "new-edge"})
    after["inputs"] = {**after.get("inputs", {}), "extra": {"type": "string"}}
    after["settings"] = {"max_concurrency": 3}
    expected = {
        "node": target["id"],
        "changes": [
            {"path": "data.description", "from": None, "to": "why it changed"},
            {"path": "data.label", "from": old_label, "to": "Edited"},
        ],
        "edges": {"added": ["new-edge"], "removed": [removed["id"]], "changed": []},
    }
    return after, expected


@pytest.mark.parametrize("template", bundled(), ids=lambda t: t.id)
def test_the_diff_of_each_bundled_template_and_its_edit(template: Any) -> None:
    before = template.canvas
    after, expected = _edited(before)
    found = diff_canvases(before, after)
    assert found["nodes"] == {
        "added": [],
        "removed": [],
        "changed": [{"id": expected["node"], "changes": expected["changes"]}],
    }
    assert found["edges"] == expected["edges"]
    assert found["inputs"] == {"added": ["extra"], "removed": [], "changed": []}
    assert found["settings"] == [
        {"path": "max_concurrency", "from": (before.get("settings") or {}).get("max_concurrency"), "to": 3}
    ]
    assert found["output"] == [] and found["document"] == []
    back = diff_canvases(after, before)
    assert back["edges"] == {"added": [expected["edges"]["removed"][0]], "removed": ["new-edge"], "changed": []}
    assert is_empty(diff_canvases(before, copy.deepcopy(before)))


def test_a_node_whose_type_and_list_field_change_names_each_path() -> None:
    before = canvas([node("a", "http", data={"url": "u", "headers": {"A": "1"}, "tools": [1, 2]})], [])
    after = canvas([node("a", "llm", data={"url": "u", "headers": {"A": "2"}, "tools": [1, 3, 4]})], [])
    assert diff_canvases(before, after)["nodes"]["changed"] == [
        {
            "id": "a",
            "changes": [
                {"path": "data.headers.A", "from": "1", "to": "2"},
                {"path": "data.tools", "from": [1, 2], "to": [1, 3, 4]},
                {"path": "type", "from": "http", "to": "llm"},
            ],
        }
    ]


# --- the routes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def databases(tmp_path_factory):
    name = f"fm_versions_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    from store.db import upgrade_schema

    urls = {
        "sqlite": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('versions') / 'store.db'}",
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
        work_pool=f"versions-{uuid.uuid4().hex[:6]}",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer key-{alice}"},
            timeout=60,
        ) as client:
            client.owner = alice  # type: ignore[attr-defined]
            client.bob = {"Authorization": f"Bearer key-{bob}"}  # type: ignore[attr-defined]
            yield client


async def test_versions_diff_and_rollback(api) -> None:
    v1 = hello()
    saved = await save(api, v1)
    wid = saved["id"]
    v2 = copy.deepcopy(v1)
    v2["nodes"][1]["data"]["output"] = "Hi {{ inputs.who }}"
    v2["nodes"][1]["position"] = {"x": 99, "y": 99}  # moved too: not a change
    assert (await api.put(f"/api/workflows/{wid}", json={"canvas": v2})).status_code == 200

    versions = await api.get(f"/api/workflows/{wid}/versions")
    assert versions.status_code == 200, versions.text
    listed = versions.json()
    assert [v["version"] for v in listed] == [1, 2]
    assert {v["created_by"] for v in listed} == {api.owner}
    assert [v["nodes"] for v in listed] == [3, 3]
    assert listed[0]["plan_hash"] != listed[1]["plan_hash"]

    diff = await api.get(f"/api/workflows/{wid}/diff", params={"from": 1, "to": 2})
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["from_version"] == 1 and body["to_version"] == 2
    assert body["nodes"] == {
        "added": [],
        "removed": [],
        "changed": [
            {
                "id": "greet",
                "changes": [{"path": "data.output", "from": "Hello {{ inputs.who }}", "to": "Hi {{ inputs.who }}"}],
            }
        ],
    }
    assert body["edges"] == {"added": [], "removed": [], "changed": []}
    latest = await api.get(f"/api/workflows/{wid}/diff", params={"from": 2})  # to: the latest
    assert latest.status_code == 200 and latest.json()["nodes"]["changed"] == []

    rolled = await api.post(f"/api/workflows/{wid}/rollback", json={"version": 1})
    assert rolled.status_code == 201, rolled.text
    assert rolled.json()["version"] == 3
    read = (await api.get(f"/api/workflows/{wid}")).json()
    assert read["version"] == 3 and read["canvas"] == v1
    listed = (await api.get(f"/api/workflows/{wid}/versions")).json()
    assert [v["version"] for v in listed] == [1, 2, 3]
    assert listed[2]["plan_hash"] == listed[0]["plan_hash"]  # the same canvas compiles to the same plan

    again = await api.post(f"/api/workflows/{wid}/rollback", json={"version": 1})
    assert again.status_code == 409 and again.json()["issues"][0]["field"] == "body.version"


async def test_version_routes_refuse_precisely(api) -> None:
    wid = (await save(api, hello()))["id"]
    missing = await api.get(f"/api/workflows/{wid}/diff", params={"from": 1, "to": 7})
    assert missing.status_code == 422 and missing.json()["issues"][0]["field"] == "query.to"
    no_from = await api.get(f"/api/workflows/{wid}/diff")
    assert no_from.status_code == 422 and "from" in no_from.text
    bad = await api.post(f"/api/workflows/{wid}/rollback", json={"version": 0})
    assert bad.status_code == 422 and "version" in bad.text
    gone = await api.post(f"/api/workflows/{wid}/rollback", json={"version": 5})
    assert gone.status_code == 422 and gone.json()["issues"][0]["field"] == "body.version"
    text = await api.post(f"/api/workflows/{wid}/rollback", json={"version": "1"})
    assert text.status_code == 422
    for path in ("versions", "diff?from=1"):
        assert (await api.get(f"/api/workflows/{uuid.uuid4()}/{path}")).status_code == 404
        assert (await api.get(f"/api/workflows/{wid}/{path}", headers=api.bob)).status_code == 404
    assert (await api.post(f"/api/workflows/{wid}/rollback", json={"version": 1}, headers=api.bob)).status_code == 404
