"""Hypothesis strategies for canvases: valid React Flow exports (the fixture canvases and
generated DAGs, shuffled and decorated the way React Flow saves them) and broken ones (one of
those with a mutation that must be refused, or any JSON at all)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "canvases"


def _fixture(path: Path) -> Any:
    raw = json.loads(path.read_text())
    if isinstance(raw, dict):  # some invalid fixtures are not even objects
        raw.pop("expect", None)
    return raw


VALID_FIXTURES = [_fixture(p) for p in sorted((FIXTURES / "valid").glob("*.json"))]
INVALID_FIXTURES = [_fixture(p) for p in sorted((FIXTURES / "invalid").glob("*.json"))]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
"""Any JSON value (NaN included: the API parses it, so the compiler may see it)."""

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def generated_dag(draw: st.DrawFn) -> dict[str, Any]:
    """start -> transforms wired as a random DAG (edges only forward) -> end."""
    names = draw(st.lists(ids.filter(lambda s: s not in ("start", "end")), min_size=1, max_size=8, unique=True))
    nodes = [{"id": "start", "type": "start", "data": {}}]
    edges = []
    for i, name in enumerate(names):
        output = draw(st.sampled_from(["{{ inputs.who }}", "literal", "{{ start }}", 42, {"k": "{{ inputs.who }}"}]))
        nodes.append({"id": name, "type": "transform", "data": {"output": output}})
        earlier = ["start"] + names[:i]
        for source in draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3, unique=True)):
            edges.append({"id": f"e{len(edges)}", "source": source, "target": name})
    nodes.append({"id": "end", "type": "end", "data": {"output": "done"}})
    edges.append({"id": f"e{len(edges)}", "source": names[-1], "target": "end"})
    return {
        "name": draw(st.text(min_size=1, max_size=30)),
        "inputs": {"who": {"type": "string"}},
        "nodes": nodes,
        "edges": edges,
    }


@st.composite
def react_flow_export(draw: st.DrawFn) -> dict[str, Any]:
    """A valid canvas as React Flow saves it: nodes and edges in any order, with the UI keys
    React Flow adds, and a viewport."""
    raw = copy.deepcopy(draw(st.sampled_from(VALID_FIXTURES) | generated_dag()))
    raw["nodes"] = draw(st.permutations(raw["nodes"]))
    raw["edges"] = draw(st.permutations(raw.get("edges", [])))
    for node in raw["nodes"]:
        if draw(st.booleans()):
            node.update(
                position={"x": draw(st.floats(-1e4, 1e4)), "y": draw(st.floats(-1e4, 1e4))},
                width=150,
                height=40,
                selected=draw(st.booleans()),
                dragging=False,
                measured={"width": 150, "height": 40},
                positionAbsolute={"x": 0, "y": 0},
            )
    for edge in raw["edges"]:
        if draw(st.booleans()):
            edge.update(animated=True, markerEnd={"type": "arrowclosed"}, style={"stroke": "#999"}, selected=False)
    raw["viewport"] = {"x": 0, "y": 0, "zoom": draw(st.floats(0.1, 4))}
    return raw


def _node_ids(raw: dict[str, Any]) -> list[str]:
    return [n["id"] for n in raw["nodes"]]


# Each breaks a valid canvas for sure (the compiler must refuse it).
def _dangling(raw, draw):
    raw["edges"].append({"id": "ghost-edge", "source": draw(st.sampled_from(_node_ids(raw))), "target": "ghost"})


def _duplicate(raw, draw):
    raw["nodes"].append(copy.deepcopy(draw(st.sampled_from(raw["nodes"]))))


def _unknown_type(raw, draw):
    draw(st.sampled_from(raw["nodes"]))["type"] = "no-such-type-" + draw(st.text(max_size=5))


def _reached(raw, node_id):
    """An edge from start to the new node: the compiler only warns about nodes start cannot
    reach (they never run), whatever is wrong with them."""
    starts = [n["id"] for n in raw["nodes"] if n.get("type") == "start" and not n.get("parentId")]
    if starts:
        raw["edges"].append({"id": f"to-{node_id}", "source": starts[0], "target": node_id})


def _cycle(raw, draw):
    raw["nodes"] += [
        {"id": "cy-a", "type": "transform", "data": {"output": 1}},
        {"id": "cy-b", "type": "transform", "data": {"output": 2}},
    ]
    raw["edges"] += [
        {"id": "cy-1", "source": "cy-a", "target": "cy-b"},
        {"id": "cy-2", "source": "cy-b", "target": "cy-a"},
    ]
    _reached(raw, "cy-a")


def _bad_template(raw, draw):
    raw["nodes"].append({"id": "broken-template", "type": "transform", "data": {"output": "{{ unclosed "}})
    _reached(raw, "broken-template")


def _missing_id(raw, draw):
    del draw(st.sampled_from(raw["nodes"]))["id"]


def _bad_parent(raw, draw):
    draw(st.sampled_from(raw["nodes"]))["parentId"] = "no-such-container"


def _wrong_shape(raw, draw):
    key = draw(st.sampled_from(["nodes", "edges", "inputs", "settings", "name"]))
    raw[key] = draw(json_values.filter(lambda v: not isinstance(v, (list, dict)) or v != raw.get(key)) | st.just(12345))


BREAKING = [_dangling, _duplicate, _unknown_type, _cycle, _bad_template, _missing_id, _bad_parent]


@st.composite
def broken_export(draw: st.DrawFn) -> dict[str, Any]:
    """A valid export with one mutation that makes it invalid."""
    raw = draw(react_flow_export())
    draw(st.sampled_from(BREAKING))(raw, draw)
    return raw


@st.composite
def misshapen(draw: st.DrawFn) -> Any:
    """Anything: a known-invalid fixture, a valid export with a part replaced by any JSON, any JSON."""
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return copy.deepcopy(draw(st.sampled_from(INVALID_FIXTURES)))
    if choice == 1:
        raw = draw(react_flow_export())
        _wrong_shape(raw, draw)
        return raw
    return draw(json_values)
