"""Each compiler stage on tiny inline canvases, with a fake catalog.

The catalog below is not ``node_handlers``: a handful of made-up node types with tiny
configuration models. That the compiler works with it (and that importing ``builder``
does not import ``node_handlers``, Prefect or FastAPI) shows the builder stands alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from builder.catalog import NodeConfig, NodeTypeSpec
from builder.compiler import (
    CompileResult,
    Draft,
    build_containers,
    check_edges,
    check_graph_cycles,
    compile_canvas,
    mark_reachable,
)
from builder.document import check_nodes, parse_document
from builder.graph import container_path
from builder.plan import TOP, CachePolicy, RetryPolicy, content_hash
from builder.references import check_references

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the fake catalog


class TaskConfig(NodeConfig):
    text: Any = None


class SwitchConfig(NodeConfig):
    cases: list[str] = Field(min_length=1)
    when: Any = None


class BoxConfig(NodeConfig):
    items: Any = None
    condition: Any = None


def _fixed(*handles: str):
    return lambda config: frozenset(handles)


FAKE_SPECS = {
    spec.type: spec
    for spec in (
        NodeTypeSpec("begin", NodeConfig, _fixed("source")),
        NodeTypeSpec(
            "task",
            TaskConfig,
            _fixed("source", "error"),
            default_retry=RetryPolicy(
                max_attempts=3, initial_delay_s=2.0, backoff_factor=3.0, retry_on=frozenset({"5xx", "429"})
            ),
            default_cache=CachePolicy(enabled=True, ttl_s=60.0),
        ),
        NodeTypeSpec(
            "switch",
            SwitchConfig,
            lambda config: frozenset(f"case-{c}" for c in config.cases) | {"else"},
            expression_keys=frozenset({"when"}),
        ),
        NodeTypeSpec("effect", TaskConfig, _fixed("source"), cacheable=False),
        NodeTypeSpec("sink", NodeConfig, _fixed(), terminal=True),
        NodeTypeSpec(
            "box",
            BoxConfig,
            _fixed("source", "error"),
            container="loop",
            cacheable=False,
            expression_keys=frozenset({"condition"}),
            own_scope_keys=frozenset({"condition"}),
        ),
        NodeTypeSpec("fan", BoxConfig, _fixed("source", "error"), container="parallel", cacheable=False),
    )
}
# The compiler treats the type named "start" as the entry node; give the fake one too.
FAKE_SPECS["start"] = dataclasses.replace(FAKE_SPECS["begin"], type="start")


class FakeCatalog:
    def spec(self, node_type: str) -> NodeTypeSpec | None:
        return FAKE_SPECS.get(node_type)

    def types(self):
        return sorted(FAKE_SPECS)


CATALOG = FakeCatalog()


def node(node_id: str, type_: str = "task", parent: str | None = None, **fields: Any) -> dict[str, Any]:
    data = fields.pop("data", {})
    out = {"id": node_id, "type": type_, "data": data, **fields}
    if parent is not None:
        out["parentId"] = parent
    return out


def edge(source: str, target: str, handle: str | None = None, edge_id: str | None = None, **fields: Any) -> dict:
    out = {"id": edge_id or f"{source}->{target}", "source": source, "target": target, **fields}
    if handle is not None:
        out["sourceHandle"] = handle
    return out


def canvas(nodes: list[dict], edges: list[dict] = (), **header: Any) -> dict[str, Any]:
    return {"name": "t", **header, "nodes": list(nodes), "edges": list(edges)}


def compile_(raw: Any) -> CompileResult:
    return compile_canvas(raw, CATALOG)


def codes(issues) -> list[tuple[str, str | None, str | None]]:
    return sorted((i.code, i.node_id, i.edge_id) for i in issues)


def errors(raw: Any) -> list[tuple[str, str | None, str | None]]:
    return codes(compile_(raw).errors)


def only(issues, code: str):
    found = [i for i in issues if i.code == code]
    assert len(found) == 1, f"expected one {code}, got {[str(i) for i in issues]}"
    return found[0]


def upto_edges(raw: Any) -> Draft:
    draft = parse_document(Draft(raw=raw))
    draft = check_nodes(draft, CATALOG)
    return check_edges(build_containers(draft))


def upto_cycles(raw: Any) -> Draft:
    return check_graph_cycles(mark_reachable(upto_edges(raw)))


# --------------------------------------------------------------------------- layering


def test_builder_imports_neither_handlers_nor_prefect_nor_fastapi():
    code = (
        "import sys\n"
        "import builder.compiler, builder.schema, builder.describe, builder.references, builder.inputs\n"
        "top = {'node_handlers', 'prefect', 'fastapi', 'flows', 'api'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in top)\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_a_fake_catalog_is_enough_to_compile():
    result = compile_(
        canvas(
            [node("s", "start"), node("a", data={"text": "{{ inputs.x }}"}), node("z", "sink")],
            [edge("s", "a"), edge("a", "z")],
        )
    )
    assert result.issues == ()
    assert result.plan is not None and set(result.plan.nodes) == {"s", "a", "z"}


# --------------------------------------------------------------------------- stage 1: parse


def test_parse_ignores_react_flow_ui_keys():
    raw = canvas(
        [
            node(
                "a",
                position={"x": 1, "y": 2},
                positionAbsolute={"x": 1, "y": 2},
                measured={"width": 10, "height": 5},
                selected=True,
                dragging=False,
                style={"color": "red"},
                width=100,
                height=40,
                className="n",
                zIndex=3,
            ),
            node("b"),
        ],
        [
            edge(
                "a",
                "b",
                animated=True,
                type="smoothstep",
                style={"stroke": "#000"},
                markerEnd={"type": "arrow"},
                selected=False,
                label="go",
                targetHandle=None,
            )
        ],
        viewport={"x": 0, "y": 0, "zoom": 1.5},
    )
    draft = parse_document(Draft(raw=raw))
    assert draft.issues == ()
    assert set(draft.nodes) == {"a", "b"} and set(draft.edges) == {"a->b"}
    assert compile_(raw).issues == ()


def test_parse_warns_about_unknown_keys_on_nodes_and_edges():
    raw = canvas([node("a", timout_s=5), node("b")], [edge("a", "b", edge_id="e1", conditon={})])
    draft = parse_document(Draft(raw=raw))
    assert [(i.code, i.severity, i.node_id, i.edge_id, i.field) for i in draft.issues] == [
        ("unknown_key", "warning", "a", None, "timout_s"),
        ("unknown_key", "warning", None, "e1", "conditon"),
    ]
    assert "timout_s" in draft.issues[0].message
    assert compile_(raw).ok  # warnings do not block the plan


def test_parse_warns_about_unknown_top_level_keys_but_not_harmless_frontend_ones():
    raw = canvas(
        [node("a")],
        setings={"on_error": "continue"},
        viewport={"zoom": 1},
        expect=[],
        id="w1",
        version=3,
        metadata={"owner": "me"},
    )
    raw["$schema"] = "https://example.test/canvas.json"
    draft = parse_document(Draft(raw=raw))
    assert [(i.code, i.severity, i.field) for i in draft.issues] == [("unknown_key", "warning", "setings")]
    assert "top level" in draft.issues[0].message
    assert compile_(raw).ok


def test_parse_accepts_react_flow_v11_parent_node():
    raw = canvas(
        [node("L", "box", data={"items": [1]}), node("a", parentNode="L"), node("b", parentNode="L", parentId="L")],
        [edge("a", "b")],
    )
    result = compile_(raw)
    assert result.issues == ()
    assert result.plan.nodes["a"].scope == result.plan.nodes["b"].scope == "L"
    clash = compile_(canvas([node("L", "box"), node("M", "box"), node("a", parentNode="L", parentId="M")]))
    issue = only(clash.errors, "invalid_node")
    assert (issue.node_id, issue.field) == ("a", "parentNode") and "different containers" in issue.message


def test_parse_header_problems_do_not_hide_each_other():
    raw = canvas(
        [node("a")],
        settings={"on_error": "explode", "max_concurrency": 3},
        inputs={"bad": {"type": "date"}, "limit": {"type": "integer", "default": "ten"}},
        output={"x": "{{ ghost.y }}"},
    )
    draft = parse_document(Draft(raw=raw))
    assert [(i.code, i.field) for i in draft.issues] == [
        ("invalid_document", "inputs.bad.type"),
        ("invalid_document", "settings.on_error"),
        ("input_default_type", "inputs.limit.default"),
    ]
    assert draft.header.settings.max_concurrency == 3 and set(draft.header.inputs) == {"limit"}
    assert ("output_unknown_reference", None, None) in errors(raw)


def test_parse_reports_a_bad_node_by_its_id_and_still_checks_the_others():
    raw = canvas(
        [
            node("first"),
            {"id": "typeless", "data": {}},
            node("ok"),
            node("bad_join", join="sometimes"),
            node("late_unknown", "nonesuch"),
        ]
    )
    draft = parse_document(Draft(raw=raw))
    assert [(i.code, i.node_id, i.field) for i in draft.issues] == [
        ("invalid_node", "typeless", "type"),
        ("invalid_node", "bad_join", "join"),
    ]
    assert "nodes[1]" in draft.issues[0].message and "nodes[3]" in draft.issues[1].message
    assert set(draft.nodes) == {"first", "ok", "late_unknown"}
    # later stages still look at the nodes that parsed
    assert errors(raw) == [
        ("invalid_node", "bad_join", None),
        ("invalid_node", "typeless", None),
        ("unknown_node_type", "late_unknown", None),
    ]


@pytest.mark.parametrize(("raw", "kind"), [([], "list"), ("{}", "str"), (None, "NoneType"), (3, "int")])
def test_parse_refuses_what_is_not_an_object(raw, kind):
    result = compile_(raw)
    assert codes(result.issues) == [("not_an_object", None, None)]
    assert kind in result.issues[0].message


def test_parse_keeps_the_first_of_duplicate_nodes_and_names_positional_edge_ids():
    raw = canvas(
        [node("a", data={"text": 1}), node("a", data={"text": 2}), node("b")],
        [{"source": "a", "target": "b"}, {"source": "b", "target": "a", "id": None}],
    )
    draft = parse_document(Draft(raw=raw))
    assert codes(draft.issues) == [("duplicate_node_id", "a", None)]
    assert draft.nodes["a"].data == {"text": 1}
    assert set(draft.edges) == {"edges[0]", "edges[1]"}


def test_parse_refuses_reserved_ids():
    raw = canvas([node(name) for name in ("inputs", "var", "env", "loop", "parallel", "run", "nodes", "fine")])
    assert errors(raw) == sorted(
        ("reserved_id", n, None) for n in ("inputs", "var", "env", "loop", "parallel", "run", "nodes")
    )


def test_parse_reports_document_fields_by_path():
    result = compile_({"name": "x", "settings": {"on_error": "later"}, "nodes": [], "edges": []})
    issue = only(result.errors, "invalid_document")
    assert issue.field == "settings.on_error"


# --------------------------------------------------------------------------- stage 2: nodes


def test_check_nodes_unknown_type_lists_the_catalog():
    draft = check_nodes(parse_document(Draft(raw=canvas([node("x", "teleport")]))), CATALOG)
    issue = only(draft.issues, "unknown_node_type")
    assert (issue.node_id, issue.field) == ("x", "type")
    assert "teleport" in issue.message and "box, effect, fan" in issue.message


def test_check_nodes_validates_data_with_the_type_model():
    draft = check_nodes(
        parse_document(Draft(raw=canvas([node("s", "switch", data={"cases": []}), node("t", data={"label": 5})]))),
        CATALOG,
    )
    assert [(i.code, i.node_id, i.field) for i in draft.issues] == [
        ("invalid_config", "s", "data.cases"),
        ("invalid_config", "t", "data.label"),
    ]
    assert set(draft.configs) == set()
    assert set(draft.specs) == {"s", "t"}


def test_check_nodes_warns_about_unknown_data_keys():
    draft = check_nodes(parse_document(Draft(raw=canvas([node("t", data={"text": 1, "colour": "red"})]))), CATALOG)
    assert [(i.code, i.severity, i.field) for i in draft.issues] == [("unknown_key", "warning", "data.colour")]


def test_check_nodes_warns_when_cache_is_asked_of_a_non_cacheable_type():
    draft = check_nodes(
        parse_document(
            Draft(raw=canvas([node("fx", "effect", cache={"enabled": True}), node("t", cache={"enabled": True})]))
        ),
        CATALOG,
    )
    assert [(i.code, i.severity, i.node_id, i.field) for i in draft.issues] == [
        ("not_cacheable", "warning", "fx", "cache.enabled")
    ]


def test_check_nodes_allows_one_start_and_names_every_start():
    raw = canvas([node("s1", "start"), node("s2", "start"), node("s3", "start")])
    issue = only(compile_(raw).errors, "multiple_start")
    assert issue.related == ("s1", "s2", "s3")
    assert all(s in issue.message for s in ("s1", "s2", "s3"))


# --------------------------------------------------------------------------- stage 3: containers


def _containers(nodes: list[dict]) -> Draft:
    return build_containers(check_nodes(parse_document(Draft(raw=canvas(nodes))), CATALOG))


def test_build_containers_records_each_scope():
    draft = _containers(
        [
            node("outer", "box", data={"items": [1]}),
            node("inner", "fan", "outer"),
            node("leaf", parent="inner"),
            node("top"),
        ]
    )
    assert dict(draft.scope_of) == {"outer": TOP, "inner": "outer", "leaf": "inner", "top": TOP}
    assert container_path(draft.scope_of, "leaf") == ("inner", "outer")
    assert draft.issues == ()


def test_build_containers_reports_bad_parents():
    draft = _containers(
        [
            node("c", "box"),
            node("lost", parent="nowhere"),
            node("plain"),
            node("adopted", parent="plain"),
            node("s", "start", "c"),
            node("b", parent="c"),
        ]
    )
    assert codes(draft.issues) == [
        ("parent_not_container", "adopted", None),
        ("start_in_container", "s", None),
        ("unknown_parent", "lost", None),
    ]
    assert draft.scope_of["lost"] == TOP and draft.scope_of["adopted"] == TOP


def test_build_containers_reports_a_containment_cycle_once():
    draft = _containers([node("b", "box", "a"), node("a", "fan", "b"), node("x", parent="a")])
    issue = only(draft.issues, "container_cycle")
    assert issue.node_id == "a" and issue.message.endswith("a -> b -> a")
    assert draft.scope_of["a"] == TOP and draft.scope_of["b"] == TOP


def test_build_containers_warns_about_an_empty_container():
    draft = _containers([node("c", "box"), node("f", "fan"), node("x", parent="f")])
    assert [(i.code, i.severity, i.node_id) for i in draft.issues] == [("empty_container", "warning", "c")]


# --------------------------------------------------------------------------- stage 4: edges


def test_check_edges_accepts_only_the_handles_a_node_offers():
    raw = canvas(
        [node("sw", "switch", data={"cases": ["a", "b"]}), node("x"), node("y"), node("z"), node("end", "sink")],
        [
            edge("sw", "x", "case-a", "ok1"),
            edge("sw", "y", "else", "ok2"),
            edge("sw", "z", "case-c", "bad1"),
            edge("sw", "z", None, "bad2"),
            edge("x", "end", None, "ok3"),
            edge("end", "z", "source", "bad3"),
        ],
    )
    draft = upto_edges(raw)
    assert codes(draft.issues) == [
        ("unknown_handle", None, "bad1"),
        ("unknown_handle", None, "bad2"),
        ("unknown_handle", None, "bad3"),
    ]
    bad1 = next(i for i in draft.issues if i.edge_id == "bad1")
    assert "'case-c'" in bad1.message and "case-a, case-b, else" in bad1.message
    assert "no handles" in next(i for i in draft.issues if i.edge_id == "bad3").message
    assert dict(draft.handles) == {"ok1": "case-a", "ok2": "else", "ok3": "source"}


@pytest.mark.parametrize("handle", [None, "source"])
def test_check_edges_absent_handle_means_source(handle):
    draft = upto_edges(canvas([node("a"), node("b")], [edge("a", "b", handle, "e")]))
    assert draft.handles["e"] == "source"


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"field": "{{ a.x }}", "operator": "eq", "value": 1}, []),
        ({"field": "{{ a.x }}", "operator": "eq", "value": None}, []),  # an explicit null is a value
        ({"field": "{{ a.x }}", "operator": "exists"}, []),
        ({"field": "{{ a.x }}", "operator": "is_empty"}, []),
        ({"field": "{{ a.x }}", "operator": "type_is", "value": "string"}, []),
        ({"field": "{{ a.x }}", "operator": "gt"}, [("missing_value", None, "e")]),
        ({"field": "{{ a.x }}", "operator": "matches"}, [("missing_value", None, "e")]),
        ({"field": "{{ a.x }}", "operator": "equals", "value": 1}, [("unknown_operator", None, "e")]),
        ({"field": "{{ a.x }}", "operator": ""}, [("unknown_operator", None, "e")]),
        ({"field": "{{ a.x }}", "value": 1}, [("invalid_edge", None, "e")]),
        ({"field": "{{ a.x }}", "operator": "eq", "value": 1, "extra": 2}, [("invalid_edge", None, "e")]),
    ],
)
def test_check_edges_condition_operators(condition, expected):
    assert (
        errors(canvas([node("a"), node("b")], [edge("a", "b", None, "e", data={"condition": condition})])) == expected
    )


def test_check_edges_structure_problems():
    raw = canvas(
        [node("s", "start"), node("a"), node("box", "box", data={"items": [1]}), node("in", parent="box")],
        [
            edge("s", "a", edge_id="ok"),
            edge("a", "ghost", edge_id="dangling"),
            edge("a", "s", edge_id="into_start"),
            edge("a", "in", edge_id="crossing"),
            edge("s", "a", edge_id="again"),
            edge("a", "box", edge_id="ok2"),
        ],
    )
    draft = upto_edges(raw)
    assert codes(draft.issues) == [
        ("dangling_edge", None, "dangling"),
        ("duplicate_edge", None, "again"),
        ("edge_crosses_container", None, "crossing"),
        ("edge_into_start", None, "into_start"),
    ]
    crossing = next(i for i in draft.issues if i.edge_id == "crossing")
    assert "the top level" in crossing.message and "'box'" in crossing.message
    assert next(i for i in draft.issues if i.code == "duplicate_edge").severity == "warning"
    assert set(draft.handles) == {"ok", "again", "ok2"}


# --------------------------------------------------------------------------- stage 5: reachability


def test_mark_reachable_warns_and_excludes_from_the_plan():
    raw = canvas(
        [
            node("s", "start"),
            node("a"),
            node("island"),
            node("after_island"),
            node("far_box", "box", data={"items": [1]}),
            node("far_body", parent="far_box"),
        ],
        [edge("s", "a"), edge("island", "after_island")],
    )
    draft = mark_reachable(upto_edges(raw))
    assert [(i.code, i.severity, i.node_id) for i in draft.issues] == [
        ("unreachable", "warning", "island"),
        ("unreachable", "warning", "after_island"),
        ("unreachable", "warning", "far_box"),
    ]
    assert draft.excluded == {"island", "after_island", "far_box", "far_body"}
    result = compile_(raw)
    assert result.ok and set(result.plan.nodes) == {"s", "a"}
    assert set(result.plan.scopes) == {TOP}
    assert result.plan.edges.keys() == {"s->a"}


def test_without_start_every_root_runs():
    raw = canvas([node("a"), node("b"), node("c")], [edge("a", "c"), edge("b", "c")])
    result = compile_(raw)
    assert result.issues == ()
    assert result.plan.scopes[TOP].roots == ("a", "b")
    assert result.plan.scopes[TOP].terminals == ("c",)


# --------------------------------------------------------------------------- stage 6: cycles


def test_cycle_message_follows_the_edges_from_the_smallest_id():
    raw = canvas(
        [node("a"), node("b"), node("c"), node("d")], [edge("a", "c"), edge("c", "b"), edge("b", "a"), edge("b", "d")]
    )
    issue = only(upto_cycles(raw).issues, "cycle")
    assert issue.node_id == "a" and set(issue.related) == {"a", "b", "c"}
    assert "a -> c -> b -> a" in issue.message and "loop container" in issue.message


def test_self_loop_is_a_cycle():
    issue = only(upto_cycles(canvas([node("x")], [edge("x", "x")])).issues, "cycle")
    assert issue.node_id == "x" and "x -> x" in issue.message


def test_cycle_inside_a_container_body_names_the_container():
    raw = canvas(
        [node("L", "box", data={"items": [1]}), node("p", parent="L"), node("q", parent="L")],
        [edge("p", "q"), edge("q", "p")],
    )
    issue = only(upto_cycles(raw).issues, "cycle")
    assert "inside 'L'" in issue.message and "p -> q -> p" in issue.message
    assert "use a loop container" not in issue.message


def test_separate_cycles_are_each_reported():
    raw = canvas(
        [node(n) for n in "abcxy"], [edge("a", "b"), edge("b", "a"), edge("x", "y"), edge("y", "x"), edge("b", "c")]
    )
    assert codes(upto_cycles(raw).issues) == [("cycle", "a", None), ("cycle", "x", None)]


def test_levels_are_longest_paths_per_scope():
    raw = canvas(
        [
            node("a"),
            node("b"),
            node("c"),
            node("L", "box", data={"items": [1]}),
            node("i", parent="L"),
            node("j", parent="L"),
        ],
        [edge("a", "b"), edge("b", "c"), edge("a", "c"), edge("c", "L"), edge("i", "j")],
    )
    draft = upto_cycles(raw)
    assert dict(draft.levels) == {"a": 0, "b": 1, "c": 2, "L": 3, "i": 0, "j": 1}


def test_cycle_message_only_names_edges_that_exist():
    raw = canvas([node("a"), node("b"), node("c")], [edge("a", "b"), edge("b", "a"), edge("a", "c"), edge("c", "a")])
    issue = only(upto_cycles(raw).issues, "cycle")
    path = issue.message.split(": ", 1)[1].split(";")[0].split(" -> ")
    existing = {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}
    assert all(step in existing for step in zip(path, path[1:])), issue.message
    assert path == ["a", "b", "a"] and "also involved: c" in issue.message
    assert set(issue.related) == {"a", "b", "c"}


def test_cycle_message_is_a_shortest_real_cycle_through_the_smallest_id():
    # a -> b -> c -> d -> a and a shortcut c -> a: the component is {a, b, c, d}
    raw = canvas(
        [node(n) for n in "abcd"], [edge("a", "b"), edge("b", "c"), edge("c", "d"), edge("d", "a"), edge("c", "a")]
    )
    issue = only(upto_cycles(raw).issues, "cycle")
    assert "cycle: a -> b -> c -> a; also involved: d;" in issue.message


def test_levels_count_a_cycle_as_one_step():
    raw = canvas(
        [node(n) for n in "sabcd"], [edge("s", "a"), edge("a", "b"), edge("b", "a"), edge("b", "c"), edge("c", "d")]
    )
    draft = upto_cycles(raw)
    assert dict(draft.levels) == {"s": 0, "a": 1, "b": 1, "c": 2, "d": 3}
    assert dict(draft.components) == {"a": "a", "b": "a"}


# --------------------------------------------------------------------------- stage 7: references


def refs(raw: Any) -> list[tuple[str, str | None, str | None]]:
    return codes(check_references(upto_cycles(raw)).issues)


def test_references_to_upstream_nodes_are_fine_and_recorded():
    raw = canvas(
        [node("s", "start"), node("a"), node("b"), node("c", data={"text": "{{ a.x }} {{ b.y }}"})],
        [edge("s", "a"), edge("a", "b"), edge("b", "c")],
    )
    draft = check_references(upto_cycles(raw))
    assert draft.issues == ()
    assert draft.references["c"] == {"a", "b"}
    assert compile_(raw).plan.nodes["c"].references == {"a", "b"}


def test_reference_not_upstream_names_both_nodes_and_the_field():
    raw = canvas(
        [node("s", "start"), node("left"), node("right", data={"text": {"deep": ["{{ left.x }}"]}})],
        [edge("s", "left"), edge("s", "right")],
    )
    issue = only(check_references(upto_cycles(raw)).issues, "reference_not_upstream")
    assert (issue.node_id, issue.field, issue.related) == ("right", "data.text.deep[0]", ("left",))
    assert "'right'" in issue.message and "'left'" in issue.message and "data.text.deep[0]" in issue.message


def test_reference_to_a_downstream_node_is_not_upstream():
    raw = canvas([node("a", data={"text": "{{ b }}"}), node("b")], [edge("a", "b")])
    assert refs(raw) == [("reference_not_upstream", "a", None)]


def test_reference_into_a_container_body():
    raw = canvas(
        [
            node("L", "box", data={"items": [1]}),
            node("inside", parent="L"),
            node("after", data={"text": "{{ inside.x }}"}),
            node("F", "fan", data={"items": [1]}),
            node("other_body", parent="F", data={"text": "{{ inside }}"}),
        ],
        [edge("L", "after"), edge("after", "F")],
    )
    issues = check_references(upto_cycles(raw)).issues
    assert codes(issues) == [
        ("reference_into_container", "after", None),
        ("reference_into_container", "other_body", None),
    ]
    assert all("'L'" in i.message for i in issues)


def test_a_body_node_cannot_read_its_own_container():
    raw = canvas([node("L", "box", data={"items": [1]}), node("b", parent="L", data={"text": "{{ L.results }}"})])
    issue = only(check_references(upto_cycles(raw)).issues, "reference_not_upstream")
    assert issue.node_id == "b" and issue.related == ("L",)


def test_body_nodes_read_upstream_nodes_of_their_containers():
    raw = canvas(
        [
            node("s", "start"),
            node("before"),
            node("L", "box", data={"items": "{{ before.list }}"}),
            node("prep", parent="L"),
            node("F", "fan", "L", data={"items": "{{ prep.x }}"}),
            node("deep", parent="F", data={"text": "{{ before.x }} {{ prep.y }} {{ loop.item }} {{ parallel.index }}"}),
        ],
        [edge("s", "before"), edge("before", "L"), edge("prep", "F")],
    )
    assert refs(raw) == []


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ([node("t", data={"text": "{{ loop.index }}"})], [("loop_outside_container", "t", None)]),
        ([node("t", data={"text": "{{ parallel.item }}"})], [("parallel_outside_container", "t", None)]),
        (
            [node("F", "fan", data={"items": [1]}), node("t", parent="F", data={"text": "{{ loop.item }}"})],
            [("loop_outside_container", "t", None)],
        ),
        (
            [node("L", "box", data={"items": [1]}), node("t", parent="L", data={"text": "{{ parallel.index }}"})],
            [("parallel_outside_container", "t", None)],
        ),
        # a loop's items are evaluated before it starts: loop.* there is not its own
        (
            [node("L", "box", data={"items": "{{ loop.results }}"}), node("b", parent="L")],
            [("loop_outside_container", "L", None)],
        ),
        # ... but its condition runs inside its own iterations
        (
            [
                node("L", "box", data={"condition": "loop.index < 3 and loop.results | length < 5"}),
                node("b", parent="L"),
            ],
            [],
        ),
        ([node("L", "box", data={"items": [1]}), node("t", parent="L", data={"text": "{{ loop.iteration }}"})], []),
    ],
)
def test_loop_and_parallel_namespaces_need_their_container(nodes, expected):
    assert refs(canvas(nodes)) == expected


def test_edge_conditions_may_read_their_source_node():
    raw = canvas(
        [node("a"), node("b"), node("c")],
        [
            edge(
                "a",
                "b",
                edge_id="own",
                data={"condition": {"field": "{{ a.status }}", "operator": "eq", "value": "{{ inputs.want }}"}},
            ),
            edge("b", "c", edge_id="target", data={"condition": {"field": "{{ c }}", "operator": "exists"}}),
        ],
    )
    issues = check_references(upto_cycles(raw)).issues
    assert codes(issues) == [("reference_not_upstream", None, "target")]
    assert issues[0].field == "data.condition.field"


def test_namespaces_need_no_node():
    raw = canvas(
        [
            node(
                "t",
                data={
                    "text": [
                        "{{ inputs.a }} {{ var.b }} {{ env.C }} {{ run.id }} {{ run.started_at }}",
                        "{% for x in inputs.list %}{{ loop.index }}{{ x }}{% endfor %}",
                    ]
                },
            )
        ]
    )
    assert compile_(raw).issues == ()


def test_unknown_reference_and_syntax_errors():
    raw = canvas(
        [node("sw", "switch", data={"cases": ["a"], "when": "ghost.x > 1"}), node("t", data={"text": "{{ unclosed"})]
    )
    issues = check_references(upto_cycles(raw)).issues
    assert [(i.code, i.node_id, i.field) for i in issues] == [
        ("unknown_reference", "sw", "data.when"),
        ("template_syntax", "t", "data.text"),
    ]
    assert "'ghost'" in issues[0].message


def test_document_output_references():
    raw = canvas(
        [node("a"), node("L", "box", data={"items": [1]}), node("in", parent="L")],
        output={
            "ok": "{{ a.x }}",
            "ghost": "{{ nope }}",
            "inner": "{{ in }}",
            "lp": "{{ loop.index }}",
            "whole": "{{ L.results }}",
        },
    )
    assert [(i.code, i.field) for i in compile_(raw).errors] == [
        ("output_unknown_reference", "output.ghost"),
        ("reference_into_container", "output.inner"),
        ("loop_outside_container", "output.lp"),
    ]


def test_loop_condition_reading_its_own_body_does_not_crash():
    raw = canvas([node("L", "box", data={"condition": "body.done != true"}), node("body", parent="L")])
    result = compile_(raw)  # must return a result, never raise
    assert isinstance(result, CompileResult)
    issue = only(result.errors, "reference_into_container")
    assert (issue.node_id, issue.field, issue.related) == ("L", "data.condition", ("body",))
    assert "loop.results" in issue.message


def test_loop_condition_may_read_loop_state_and_nodes_upstream_of_the_loop():
    raw = canvas(
        [
            node("a"),
            node("L", "box", data={"condition": "loop.results[-1].done != a.x"}),
            node("body", parent="L"),
            node("deep", "box", parent="L"),
            node("deeper", parent="deep"),
            node("M", "box", data={"condition": "deeper.x"}),
        ],
        [edge("a", "L"), edge("L", "M")],
    )
    result = compile_(raw)
    assert codes(result.errors) == [("reference_into_container", "M", None)]
    assert (
        compile_(canvas([node("N", "box", data={"condition": "N.x"}), node("b", parent="N")])).errors[0].code
        == "reference_not_upstream"
    )


def test_a_cycle_elsewhere_does_not_invent_reference_errors():
    raw = canvas(
        [node("a"), node("b"), node("c"), node("d", data={"text": "{{ c.x }}"})],
        [edge("a", "b"), edge("b", "a"), edge("b", "c"), edge("c", "d")],
    )
    assert errors(raw) == [("cycle", "a", None)]


def test_self_reference_message_says_it_reads_itself():
    issue = only(compile_(canvas([node("me", data={"text": "{{ me.x }}"})])).errors, "reference_not_upstream")
    assert "contains" not in issue.message
    assert "reads its own output" in issue.message


def test_a_node_named_like_a_jinja_global_is_checked_or_reserved():
    raw = canvas([node("range"), node("reader", data={"text": "{{ range.x }}"})])  # not connected
    assert compile_(raw).errors != []
    assert codes(compile_(raw).errors) == [("reserved_id", "range", None)]


def test_every_name_jinja_provides_is_a_reserved_id():
    from builder.document import RESERVED_IDS
    from builder.templates import get_environment

    assert set(get_environment().globals) | {"self"} <= RESERVED_IDS
    for name in sorted(set(get_environment().globals) | {"self"}):
        issue = only(compile_(canvas([node(name)])).errors, "reserved_id")
        assert "rename the node" in issue.message


# --------------------------------------------------------------------------- stage 8: the plan


PLAN_CANVAS = canvas(
    [
        node("s", "start"),
        node("a", data={"text": "{{ inputs.x }}", "label": "A"}, retry={"initial_delay_s": 0.5}),
        node("sw", "switch", data={"cases": ["hi", "lo"], "when": "a.n > 1"}),
        node("L", "box", data={"items": [1, 2]}),
        node("i", parent="L", data={"text": "{{ loop.item }}"}),
        node("j", parent="L"),
        node("end", "sink"),
    ],
    [
        edge("s", "a", edge_id="e1"),
        edge("a", "sw", edge_id="e2"),
        edge("sw", "L", "case-hi", "e3"),
        edge("sw", "end", "else", "e4"),
        edge("L", "end", edge_id="e5"),
        edge("i", "j", edge_id="e6"),
    ],
    inputs={"x": {"type": "integer", "default": 1}},
    variables={"v": [1, 2]},
    output={"o": "{{ a.text }}"},
)


def _shuffled(raw: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)

    def shuffle_keys(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: shuffle_keys(v) for k, v in items}
        if isinstance(value, list):
            return [shuffle_keys(v) for v in value]
        return value

    out = shuffle_keys(raw)
    rng.shuffle(out["nodes"])
    rng.shuffle(out["edges"])
    return out


def test_plan_hash_ignores_key_and_list_order():
    first = compile_(PLAN_CANVAS)
    assert first.ok
    for seed in range(5):
        again = compile_(_shuffled(PLAN_CANVAS, seed))
        assert again.plan.hash == first.plan.hash
        assert again.plan.to_dict() == first.plan.to_dict()
    assert first.plan.hash == content_hash(first.plan.to_dict())


@pytest.mark.parametrize("change", ["data", "retry", "edge handle", "join", "output"])
def test_plan_hash_changes_with_the_content(change):
    raw = json.loads(json.dumps(PLAN_CANVAS))
    nodes = {n["id"]: n for n in raw["nodes"]}
    if change == "data":
        nodes["a"]["data"]["text"] = "{{ inputs.x }}!"
    elif change == "retry":
        nodes["a"]["retry"]["initial_delay_s"] = 0.25
    elif change == "edge handle":
        raw["edges"][2]["sourceHandle"] = "case-lo"
    elif change == "join":
        nodes["end"]["join"] = "any"
    else:
        raw["output"] = {"o": "{{ a }}"}
    assert compile_(raw).plan.hash != compile_(PLAN_CANVAS).plan.hash


def test_plan_is_frozen():
    plan = compile_(PLAN_CANVAS).plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.nodes["a"].timeout_s = 3
    with pytest.raises(TypeError):
        plan.nodes["x"] = plan.nodes["a"]  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.nodes["a"].data["text"] = "changed"  # type: ignore[index]


def test_plan_to_dict_is_json():
    plan = compile_(PLAN_CANVAS).plan
    as_json = json.dumps(plan.to_dict())  # no default=: everything must already be JSON
    back = json.loads(as_json)
    assert back["hash"] == plan.hash
    assert [n["id"] for n in back["nodes"]] == sorted(plan.nodes)
    assert back["scopes"] == [
        {"id": "", "nodes": ["s", "a", "sw", "L", "end"], "roots": ["s"], "terminals": ["end"]},
        {"id": "L", "nodes": ["i", "j"], "roots": ["i"], "terminals": ["j"]},
    ]
    node_a = next(n for n in back["nodes"] if n["id"] == "a")
    assert (node_a["label"], node_a["incoming"], node_a["outgoing"], node_a["level"]) == ("A", ["e1"], ["e2"], 1)
    assert next(n for n in back["nodes"] if n["id"] == "sw")["handles"] == ["case-hi", "case-lo", "else"]


def test_retry_defaults_come_from_the_type_merged_with_the_node():
    raw = canvas(
        [
            node("plain"),
            node("tuned", retry={"initial_delay_s": 0.5, "retry_on": ["timeout"]}),
            node("sw", "switch", data={"cases": ["a"]}, retry={"max_attempts": 2}),
        ]
    )
    result = compile_(raw)
    nodes = result.plan.nodes
    assert nodes["plain"].retry == FAKE_SPECS["task"].default_retry
    assert nodes["tuned"].retry == RetryPolicy(
        max_attempts=3, initial_delay_s=0.5, backoff_factor=3.0, retry_on=frozenset({"timeout"})
    )
    # switch retries nothing by default: attempts asked for without retry_on retry every class,
    # and a warning says so
    assert nodes["sw"].retry == RetryPolicy(
        max_attempts=2, retry_on=frozenset({"timeout", "connection", "5xx", "429", "error"})
    )
    assert [(w.code, w.node_id, w.field) for w in result.warnings] == [("retry_on_defaulted", "sw", "retry.retry_on")]


def test_cache_defaults_and_non_cacheable_types():
    raw = canvas(
        [
            node("plain"),
            node("off", cache={"enabled": False}),
            node("fx", "effect", cache={"enabled": True, "ttl_s": 9}),
        ]
    )
    result = compile_(raw)
    assert [(i.code, i.node_id) for i in result.warnings] == [("not_cacheable", "fx")]
    nodes = result.plan.nodes
    assert nodes["plain"].cache == CachePolicy(enabled=True, ttl_s=60.0)
    assert nodes["off"].cache.enabled is False
    assert nodes["fx"].cache == CachePolicy(enabled=False)


def test_errors_mean_no_plan_but_every_issue():
    raw = canvas([node("a", "nonesuch"), node("b", data={"text": "{{ ghost }}"})], [edge("a", "zz")])
    result = compile_(raw)
    assert result.plan is None and not result.ok
    assert codes(result.errors) == [
        ("dangling_edge", None, "a->zz"),
        ("unknown_node_type", "a", None),
        ("unknown_reference", "b", None),
    ]


def test_the_plan_does_not_change_when_the_input_canvas_does():
    raw = json.loads(json.dumps(PLAN_CANVAS))
    raw["nodes"][1]["data"]["text"] = {"nested": "{{ inputs.x }}"}
    plan = compile_(raw).plan
    before = plan.to_dict()
    raw["nodes"][1]["data"]["text"]["nested"] = "tampered"
    raw["variables"]["v"].append(3)
    assert plan.to_dict() == before
    assert content_hash(plan.to_dict()) == plan.hash


def test_nested_plan_data_is_read_only():
    raw = json.loads(json.dumps(PLAN_CANVAS))
    raw["nodes"][1]["data"]["text"] = {"nested": [1]}
    plan = compile_(raw).plan
    with pytest.raises(TypeError):
        plan.nodes["a"].data["text"]["nested"] = [2]


def test_plan_data_reads_like_json_and_thaws_into_plain_values():
    import copy
    import pickle

    from builder.plan import FrozenDict, FrozenList, thaw

    raw = json.loads(json.dumps(PLAN_CANVAS))
    raw["nodes"][1]["data"]["text"] = {"nested": [1, {"deep": "{{ inputs.x }}"}]}
    plan = compile_(raw).plan
    data = plan.nodes["a"].data
    assert isinstance(data, dict) and isinstance(data["text"]["nested"], list)  # dict and list to every reader
    assert type(data) is FrozenDict and type(data["text"]["nested"]) is FrozenList
    assert json.loads(json.dumps(data)) == {"text": {"nested": [1, {"deep": "{{ inputs.x }}"}]}, "label": "A"}
    for change in (
        lambda: data["text"]["nested"].append(2),
        lambda: data["text"].update(x=1),
        lambda: data.pop("text"),
        lambda: plan.variables["v"].append(3),
        lambda: plan.output.clear(),
        lambda: plan.inputs["x"].update(type="string"),
    ):
        with pytest.raises(TypeError):
            change()
    assert pickle.loads(pickle.dumps(data)) == data and type(pickle.loads(pickle.dumps(data))) is FrozenDict
    assert copy.deepcopy(data) == data
    mutable = thaw(data)
    mutable["text"]["nested"].append(2)
    assert type(mutable["text"]["nested"]) is list and data["text"]["nested"] == [1, {"deep": "{{ inputs.x }}"}]
    assert type(plan.to_dict()["variables"]["v"]) is list


def test_plan_objects_have_every_field():
    plan = compile_(PLAN_CANVAS).plan
    for node in plan.nodes.values():
        assert node == type(node)(**{f.name: getattr(node, f.name) for f in dataclasses.fields(node)})
    for edge in plan.edges.values():
        assert edge == type(edge)(**{f.name: getattr(edge, f.name) for f in dataclasses.fields(edge)})
        with pytest.raises(dataclasses.FrozenInstanceError):
            edge.handle = "error"  # type: ignore[misc]


def test_plan_hash_covers_edge_conditions_and_settings():
    raw = json.loads(json.dumps(PLAN_CANVAS))
    raw["edges"][0]["data"] = {"condition": {"field": "{{ s.x }}", "operator": "eq", "value": 1}}
    first = compile_(raw).plan
    raw["edges"][0]["data"]["condition"]["value"] = 2
    assert compile_(raw).plan.hash != first.hash
    assert compile_({**PLAN_CANVAS, "settings": {"max_concurrency": 2}}).plan.hash != compile_(PLAN_CANVAS).plan.hash
    assert content_hash(first.to_dict()) == first.hash


def test_compile_is_a_pure_function_of_the_canvas():
    raw = json.loads(json.dumps(PLAN_CANVAS))
    snapshot = json.dumps(raw, sort_keys=True)
    results = [compile_(raw) for _ in range(2)]
    assert json.dumps(raw, sort_keys=True) == snapshot  # the input is not modified
    assert results[0].plan == results[1].plan and results[0].issues == results[1].issues


def test_compile_leaves_the_garbage_collector_as_it_was():
    """The API compiles in threads while it serves other requests: a compile must not turn
    the collector off for the whole process (issue 21 item 10). Only ``collector_paused``,
    which the CLI wraps its compile in, pauses it, and restores it as it was."""
    import gc

    from builder.compiler import collector_paused

    class Watching:  # a catalog that records the collector's state during the compile
        def spec(self, node_type):
            seen.append(gc.isenabled())
            return CATALOG.spec(node_type)

        def types(self):
            return CATALOG.types()

    was_enabled = gc.isenabled()
    try:
        for enabled in (True, False):
            seen: list[bool] = []
            (gc.enable if enabled else gc.disable)()
            assert compile_canvas(PLAN_CANVAS, Watching()).ok
            assert gc.isenabled() is enabled
            assert seen and set(seen) == {enabled}  # left alone meanwhile
            seen = []
            with collector_paused():
                assert compile_canvas(PLAN_CANVAS, Watching()).ok
            assert gc.isenabled() is enabled
            assert seen and not any(seen)  # paused meanwhile
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_node_and_edge_order_do_not_change_issues():
    raw = canvas(
        [node("a", data={"text": "{{ c }}"}), node("b"), node("c"), node("z", "nonesuch")],
        [edge("a", "b"), edge("b", "c"), edge("c", "ghost")],
    )
    baseline = sorted(map(str, compile_(raw).issues))
    for nodes in itertools.permutations(raw["nodes"]):
        assert sorted(map(str, compile_({**raw, "nodes": list(nodes)}).issues)) == baseline
