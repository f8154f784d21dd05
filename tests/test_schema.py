"""The published JSON Schema of a canvas (``builder.schema.canvas_json_schema``), checked with
``jsonschema``'s Draft 2020-12 validator against the fixture canvases.

The schema describes the *shape* of a canvas: types, required fields, known node types and
each handler's ``data`` model, with the handlers' cross-field rules JSON Schema can state
("a for loop needs count": tests/test_node_catalog.py). Graph rules (cycles, handles, edges
crossing containers, template references, reachability) cannot be written in JSON Schema:
those need the compiler (``flowmaestro validate`` / ``POST /api/workflows/validate``). So
the structural invalid fixtures must fail here, and the graph-rule fixtures must pass here
while the compiler rejects them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed in the project venv")
from jsonschema import Draft202012Validator  # noqa: E402

from builder.compiler import compile_canvas  # noqa: E402
from builder.schema import canvas_json_schema  # noqa: E402
from node_handlers.registry import build_registry  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "canvases"
VALID = sorted((FIXTURES / "valid").glob("*.json"))

# Invalid fixtures whose problems are structural: wrong types, missing required fields,
# unknown node types, handler configuration the data model refuses.
STRUCTURAL = [
    "not_an_object.json",
    "invalid_document.json",
    "nodes_edges_not_lists.json",
    "invalid_nodes.json",
    "unknown_node_type.json",
    "invalid_config.json",
    "edge_condition_operators.json",  # a condition without operator
    "many_problems.json",
]
# Invalid fixtures that are well-formed JSON documents: only the compiler sees what is wrong.
GRAPH_RULES = [
    "cycles.json",
    "container_cycle.json",
    "container_parents.json",
    "dangling_edge.json",
    "duplicate_ids.json",
    "edge_crosses_container.json",
    "edge_into_start.json",
    "multiple_start.json",
    "reserved_ids.json",
    "unknown_handle.json",
    "template_syntax.json",
    "namespace_outside_container.json",
    "unknown_reference.json",
    "reference_unreachable.json",
    "reference_into_container.json",
    "reference_not_upstream.json",
    "input_default_type.json",
]


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = canvas_json_schema(build_registry())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _problems(validator: Draft202012Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_schema_is_draft_2020_12_and_lists_every_node_type(validator):
    schema = validator.schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    node_types = schema["$defs"]["NodeModel"]["properties"]["type"]["enum"]
    assert node_types == sorted(build_registry().types())
    assert {"start", "end", "transform", "condition", "loop", "parallel", "http", "llm"} <= set(node_types)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_fixtures_fit_the_schema(validator, path):
    assert _problems(validator, _load(path)) == []


@pytest.mark.parametrize("name", STRUCTURAL)
def test_structural_problems_fail_the_schema(validator, name):
    document = _load(FIXTURES / "invalid" / name)
    assert _problems(validator, document) != []
    assert not compile_canvas(document, build_registry()).ok


@pytest.mark.parametrize("name", GRAPH_RULES)
def test_graph_rules_need_the_compiler(validator, name):
    """These canvases are well-formed, so the schema accepts them; the compiler does not."""
    document = _load(FIXTURES / "invalid" / name)
    assert _problems(validator, document) == []
    assert not compile_canvas(document, build_registry()).ok


def _one_node(type_: str, data: Any, **extra: Any) -> dict[str, Any]:
    return {"nodes": [{"id": "n", "type": type_, "data": data, **extra}], "edges": []}


@pytest.mark.parametrize(
    ("document", "path"),
    [
        (_one_node("transform", {}), "nodes/0/data"),  # output required
        (_one_node("condition", {"conditions": []}), "nodes/0/data/conditions"),  # at least one
        (_one_node("condition", {"conditions": [{"id": "a b", "expression": "x"}]}), "nodes/0/data/conditions/0/id"),
        (_one_node("loop", {"mode": "foreach", "items": [1]}), "nodes/0/data/mode"),  # enum, case matters
        (_one_node("http", {"url": ""}), "nodes/0/data/url"),
        (_one_node("delay", {"seconds": [1]}), "nodes/0/data/seconds"),
        (_one_node("approval", {"form": {"x": {"type": "date"}}}), "nodes/0/data/form/x/type"),
        (_one_node("transform", {"output": 1}, join="first"), "nodes/0/join"),
        (_one_node("transform", {"output": 1}, retry={"max_attempts": 0}), "nodes/0/retry"),
        (_one_node("webhook", {}), "nodes/0/type"),
        ({"nodes": [{"type": "start"}]}, "nodes/0"),  # id required
        ({"nodes": [], "edges": [{"source": "a"}]}, "edges/0"),  # target required
        ({"nodes": [], "settings": {"on_error": "later"}}, "settings/on_error"),
        ({"nodes": [], "inputs": {"x": {"type": "date"}}}, "inputs/x/type"),
        ({"schema_version": 2, "nodes": []}, "schema_version"),
    ],
)
def test_the_schema_points_at_the_structural_problem(validator, document, path):
    paths = ["/".join(map(str, error.absolute_path)) for error in validator.iter_errors(document)]
    assert paths, "the schema accepted it"
    assert any(p.startswith(path) for p in paths), paths
    assert not compile_canvas(document, build_registry()).ok


def test_templatable_fields_accept_only_templates_as_text(validator):
    document = _one_node("loop", {"mode": "for", "count": "three"})
    assert not compile_canvas(document, build_registry()).ok
    assert _problems(validator, document) != []


@pytest.mark.parametrize(
    ("type_", "data", "ok"),
    [
        ("loop", {"mode": "for", "count": "{{ inputs.n }}"}, True),
        ("loop", {"mode": "for", "count": "{% if x %}1{% endif %}"}, True),
        ("http", {"url": "https://x.test", "method": "FETCH"}, False),
        ("http", {"url": "https://x.test", "method": "{{ inputs.verb }}"}, True),
        ("parallel", {"mode": "collection", "items": "all of them"}, False),
        ("parallel", {"mode": "collection", "items": "{{ inputs.items }}"}, True),
        ("delay", {"seconds": "soon"}, False),
    ],
)
def test_schema_and_compiler_agree_on_value_or_template_fields(validator, type_, data, ok):
    document = _one_node(type_, data)
    assert (_problems(validator, document) == []) is ok
    issues = [i for i in compile_canvas(document, build_registry()).errors if i.code == "invalid_config"]
    assert (issues == []) is ok, issues
    if not ok:
        assert len(issues) == 1 and "template" in issues[0].message  # one readable error per field
