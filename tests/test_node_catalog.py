"""The node catalog (``GET /api/node-types``): every registered type, plugins included, with
the schemas the compiler enforces. A canvas drawn only from the catalog compiles; what the
compiler refuses, the catalog's schemas refuse too.

The API runs with its lifespan on a SQLite store; the routes reach neither Prefect nor a
service, so this module needs none."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from api.app import create_app
from api.settings import ApiSettings
from builder.catalog import NAMES_FROM, NOT_ABOVE, UNIQUE_KEYS
from builder.compiler import compile_canvas
from builder.schema import canvas_json_schema
from node_handlers.catalog import CATEGORIES, NodeTypeCatalog
from node_handlers.registry import build_registry
from node_handlers.settings import HandlerSettings
from tests.json_schema_strategy import INPUTS, instances, names_known
from tests.support import TEST_HANDLERS

KEY = "catalog-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BUILT_IN = {
    "start", "end", "transform", "merge", "set_variable", "condition", "delay", "loop",
    "parallel", "subworkflow", "http", "llm", "router", "approval",
}  # fmt: skip
PLUGIN_TYPES = {cls.type for cls in TEST_HANDLERS}


@pytest.fixture(scope="module")
def client(test_handler_plugin, tmp_path_factory):
    home = tmp_path_factory.mktemp("catalog")
    app = create_app(
        ApiSettings(home=home, database_url=f"sqlite+aiosqlite:///{home / 'store.db'}", api_keys=f"owner:{KEY}")
    )
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def registry(test_handler_plugin):
    """The registry the API builds: the built-in types and the test plugin's."""
    return build_registry()


@pytest.fixture(scope="module")
def catalog(registry) -> NodeTypeCatalog:
    return NodeTypeCatalog(registry)


def test_every_registered_type_is_listed_plugins_included(client, registry):
    answer = client.get("/api/node-types", headers=AUTH)
    assert answer.status_code == 200, answer.text
    listed = [entry["type"] for entry in answer.json()]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(registry.types())
    assert BUILT_IN | PLUGIN_TYPES <= set(listed)
    for entry in answer.json():
        assert set(entry) >= {
            "type", "label", "category", "description", "config_schema", "handles", "defaults", "side_effects",
        }  # fmt: skip
        assert entry["label"] and entry["category"]
        Draft202012Validator.check_schema(entry["config_schema"])


def test_one_type_and_its_fields(client):
    answer = client.get("/api/node-types/http", headers=AUTH)
    assert answer.status_code == 200, answer.text
    http = answer.json()
    assert (http["label"], http["category"], http["side_effects"]) == ("HTTP request", "integration", True)
    assert [h["id"] for h in http["handles"]] == ["source", "error"]
    assert http["defaults"]["retry"]["max_attempts"] == 3
    assert http["defaults"]["retry"]["retry_on"] == ["429", "5xx", "connection", "timeout"]
    assert http["defaults"]["cache"] == {"enabled": False, "ttl_s": None, "available": True}
    assert http["config_schema"]["required"] == ["url"]
    condition = client.get("/api/node-types/condition", headers=AUTH).json()
    assert condition["handles"][0] == {
        "id": "condition-<id>",
        "description": condition["handles"][0]["description"],
        "dynamic_from": "data.conditions[].id",
    }
    assert [h["id"] for h in condition["handles"]] == ["condition-<id>", "else", "error"]
    assert condition["side_effects"] is False
    delay = client.get("/api/node-types/delay", headers=AUTH).json()
    assert delay["defaults"]["cache"]["available"] is False
    # A plugin that says nothing of itself gets the defaults.
    plugin = client.get("/api/node-types/test_count", headers=AUTH).json()
    assert (plugin["label"], plugin["category"], plugin["side_effects"]) == ("Test count", "other", True)
    assert [h["id"] for h in plugin["handles"]] == ["source", "error"]


def test_the_cli_prints_the_catalog_the_api_serves(client):
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    printed = runner.invoke(app, ["node-types"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == client.get("/api/node-types", headers=AUTH).json()
    one = runner.invoke(app, ["node-types", "router"])
    assert json.loads(one.stdout) == client.get("/api/node-types/router", headers=AUTH).json()
    unknown = runner.invoke(app, ["node-types", "nope"])
    assert unknown.exit_code == 2 and "unknown node type 'nope'" in unknown.output


def test_unknown_type_is_404_naming_the_known_ones(client):
    answer = client.get("/api/node-types/no_such_type", headers=AUTH)
    assert answer.status_code == 404
    body = answer.json()
    assert "unknown node type 'no_such_type'" in body["detail"] and "http" in body["detail"]
    assert body["issues"][0]["code"] == "unknown_node_type"


def test_the_catalog_needs_a_key(client):
    assert client.get("/api/node-types").status_code == 401
    assert client.get("/api/node-types/http", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_openapi_documents_both_routes_and_their_errors(client):
    paths = client.app.openapi()["paths"]
    assert set(paths["/api/node-types"]["get"]["responses"]) >= {"200", "401"}
    assert set(paths["/api/node-types/{node_type}"]["get"]["responses"]) >= {"200", "401", "404"}


def test_the_canvas_schema_publishes_the_same_data_schemas(catalog, registry):
    canvas = canvas_json_schema(registry)
    for entry in catalog.entries():
        published = {k: v for k, v in entry.config_schema.items() if k not in ("$schema", "$defs")}
        name = f"{published['title']}_{entry.type}"
        assert canvas["$defs"][name] == published, entry.type


def test_handles_the_catalog_describes_are_what_the_handlers_give(catalog, registry):
    samples = {
        "condition": {"conditions": [{"id": "a", "expression": "true"}, {"id": "b", "expression": "true"}]},
        "router": {"routes": [{"id": "x"}, {"id": "y"}], "prompt": "hi"},
    }
    for entry in catalog.entries():
        spec = registry.spec(entry.type)
        handler = registry.handler(entry.type)
        data = samples.get(entry.type)
        config = spec.config_model.model_validate(data) if data else spec.config_model.model_construct()
        described = set()
        for handle in entry.handles:
            if handle.dynamic_from:
                described |= {handle.id.replace("<id>", item) for item in _dynamic_ids(data, handle.dynamic_from)}
            else:
                described.add(handle.id)
        assert described == set(handler.handles(config)), entry.type


def _dynamic_ids(data: dict[str, Any], where: str) -> list[str]:
    """``data.conditions[].id`` of ``data``."""
    match = re.fullmatch(r"data\.(\w+)\[\]\.(\w+)", where)
    assert match, where
    return [item[match.group(2)] for item in data[match.group(1)]]


def test_the_loop_schema_states_the_installation_cap():
    capped = NodeTypeCatalog(build_registry(HandlerSettings(max_loop_iterations=5))).entry("loop")
    assert capped is not None
    data = {"mode": "for", "count": 6, "max_iterations": 100}
    assert catalog_refuses(capped.config_schema, data)
    assert not compile_canvas(
        {"nodes": [{"id": "n", "type": "loop", "data": data}]}, build_registry(HandlerSettings(max_loop_iterations=5))
    ).ok
    assert not catalog_refuses(capped.config_schema, {**data, "count": 5})


def test_palette_order_and_categories(catalog):
    categories = [entry.category for entry in catalog.entries()]
    known = [c for c in categories if c in CATEGORIES]
    assert known == sorted(known, key=CATEGORIES.index)
    assert categories[-len(PLUGIN_TYPES) :] == ["other"] * len(PLUGIN_TYPES)


# --- a canvas built from the catalog compiles ------------------------------------------


@st.composite
def catalog_canvas(draw: st.DrawFn, catalog: NodeTypeCatalog) -> dict[str, Any]:
    """A start node and one node of every other type, its data drawn from the catalog's
    schema, each fed by start and leaving by a handle the catalog lists into an end node."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start", "data": {}}]
    edges: list[dict[str, Any]] = []
    for entry in catalog.entries():
        if entry.type == "start":
            continue
        node_id = f"n_{entry.type}"
        data = draw(instances(entry.config_schema), label=entry.type)
        nodes.append({"id": node_id, "type": entry.type, "data": data})
        edges.append({"id": f"in_{node_id}", "source": "start", "target": node_id})
        if not entry.handles:
            continue
        handle = draw(st.sampled_from(entry.handles))
        handle_id = handle.id
        if handle.dynamic_from:
            handle_id = handle.id.replace("<id>", draw(st.sampled_from(_dynamic_ids(data, handle.dynamic_from))))
        nodes.append({"id": f"end_{node_id}", "type": "end", "data": {}})
        edges.append({"id": f"out_{node_id}", "source": node_id, "target": f"end_{node_id}", "sourceHandle": handle_id})
    return {"name": "from the catalog", "inputs": INPUTS, "nodes": nodes, "edges": edges}


def test_a_canvas_drawn_from_the_catalog_compiles(catalog, registry):
    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(catalog_canvas(catalog))
    def compiles(raw: dict[str, Any]) -> None:
        result = compile_canvas(raw, registry)
        assert result.ok, [str(issue) for issue in result.errors]
        assert len(result.plan.nodes) == len(raw["nodes"])

    compiles()


# --- what the compiler refuses, the catalog's schemas refuse ----------------------------

REFUSED = [
    ("delay", {"seconds": 1, "until": "2030-01-01T00:00:00Z"}),
    ("delay", {}),
    ("loop", {"mode": "for"}),
    ("loop", {"mode": "for", "count": -1}),
    ("loop", {"mode": "for", "count": 20_000, "max_iterations": 1_000_000}),
    ("loop", {"mode": "for", "count": 50, "max_iterations": 10}),
    ("loop", {"mode": "forEach", "items": list(range(1001))}),
    ("loop", {"mode": "sometimes", "count": 1}),
    ("parallel", {"mode": "collection"}),
    ("http", {"url": "http://x", "json": {"a": 1}, "body": "text"}),
    ("http", {"url": "http://x", "expected_status": [700]}),
    ("http", {"url": "http://x", "expected_status": ["2yy"]}),
    ("http", {"url": ""}),
    ("http", {"url": "http://x", "auth": {"type": "bearer"}}),
    ("http", {"url": "http://x", "auth": {"type": "bearer", "token_secret": "T"}, "credential": "mine"}),
    ("http", {"url": "http://x", "credential": "Not A Name"}),
    ("llm", {"prompt": "hi", "credential": "mine", "api_key_secret": "OPENAI"}),
    ("router", {"routes": [{"id": "x"}], "prompt": "hi", "credential": "mine", "api_key_secret": "OPENAI"}),
    ("set_variable", {"name": "1st"}),
    ("condition", {"conditions": []}),
    ("condition", {"conditions": [{"id": "a", "expression": "true"}, {"id": "a", "expression": "false"}]}),
    ("router", {"routes": [{"id": "x"}, {"id": "x"}], "prompt": "hi"}),
    ("router", {"prompt": "hi"}),
    ("llm", {}),
    ("llm", {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}),
    ("llm", {"prompt": "hi", "temperature": 3}),
    ("approval", {"form": {"approved": {"type": "boolean"}}}),
    ("approval", {"form": {"not an identifier": {}}}),
    ("approval", {"timeout_s": 0}),
    ("subworkflow", {"workflow": "child", "version": 0}),
    ("transform", {}),
]


def catalog_refuses(schema: dict[str, Any], data: dict[str, Any]) -> bool:
    """The schema refuses ``data``, its annotations (x-unique-keys, x-not-above, x-names-from) included."""
    if not Draft202012Validator(schema).is_valid(data):
        return True
    for name, field in schema.get("properties", {}).items():
        for key in field.get(UNIQUE_KEYS, ()):
            ids = [item.get(key) for item in data.get(name) or []]
            if len(ids) != len(set(ids)):
                return True
    for name, other in schema.get(NOT_ABOVE, {}).items():
        value = data.get(name)
        size = len(value) if isinstance(value, list) else value
        limit = data.get(other, schema["properties"][other].get("default"))
        if isinstance(size, int) and size > limit:
            return True
    return not names_known(data, schema.get(NAMES_FROM, {}))


@pytest.mark.parametrize(("node_type", "data"), REFUSED, ids=[f"{t}-{i}" for i, (t, _) in enumerate(REFUSED)])
def test_what_the_compiler_refuses_the_catalog_refuses(catalog, registry, node_type, data):
    raw = {"nodes": [{"id": "n", "type": node_type, "data": data}], "edges": []}
    result = compile_canvas(raw, registry)
    assert not result.ok and {i.node_id for i in result.errors} == {"n"}, [str(i) for i in result.errors]
    entry = catalog.entry(node_type)
    assert entry is not None
    assert catalog_refuses(entry.config_schema, data)


def test_what_the_compiler_accepts_the_catalog_accepts(catalog, registry):
    accepted = [
        ("loop", {"mode": "for", "count": 50, "max_iterations": 50}),
        ("loop", {"mode": "forEach", "items": "{{ inputs.items }}"}),
        ("delay", {"seconds": "{{ inputs.n }}"}),
        ("http", {"url": "http://x", "json": {"a": 1}, "body": None, "expected_status": ["2xx", 404]}),
        ("condition", {"conditions": [{"id": "a", "expression": "inputs.n > 1"}, {"id": "b", "expression": True}]}),
        ("approval", {"form": {"reason": {"type": "string"}}, "timeout_s": 5}),
    ]
    for node_type, data in accepted:
        raw = {"inputs": INPUTS, "nodes": [{"id": "n", "type": node_type, "data": data}], "edges": []}
        assert compile_canvas(raw, registry).ok, (node_type, data)
        assert not catalog_refuses(catalog.entry(node_type).config_schema, data), (node_type, data)
