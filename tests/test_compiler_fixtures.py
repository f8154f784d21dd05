"""The fixture canvases in tests/fixtures/canvases, compiled with the real handler registry.

``valid/*.json`` must compile: no errors, a plan, and exactly the warnings listed under the
top-level key ``expect.warnings``. ``invalid/*.json`` must not compile and must report exactly
the errors listed under their top-level ``expect`` key (a canvas that is not a JSON object
cannot carry it: its expectations live in ``invalid/expectations.json``).

Each expectation is ``{code, node_id?, edge_id?, field?}``. The multiset of
``(code, node_id, edge_id)`` of the errors must equal the expected one exactly (an absent
``node_id``/``edge_id`` means none), and every expectation that names a ``field`` must be
matched by an error with that field. The compiler ignores unknown top-level keys, which is
checked below rather than assumed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from builder.compiler import CompileResult, compile_canvas
from builder.issues import Issue
from node_handlers.registry import build_registry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "canvases"
VALID = sorted((FIXTURES / "valid").glob("*.json"))
SIDE_EXPECTATIONS = FIXTURES / "invalid" / "expectations.json"
INVALID = sorted(p for p in (FIXTURES / "invalid").glob("*.json") if p != SIDE_EXPECTATIONS)

# Fixtures that document a compiler bug: they state what the compiler should report.
KNOWN_BUGS: dict[str, str] = {}

# Codes only ``builder.inputs.validate_inputs`` emits, when a run's inputs are checked; they
# are not compile issues, so no canvas fixture can produce them.
RUN_TIME_CODES = {"input_missing", "input_type", "input_unknown"}
# Codes of the compiler's guards that no fixture can produce under the default limits: the
# time budget (none by default) and a RecursionError that the caps should keep from
# happening. tests/security/test_compile_dos.py produces both.
GUARD_CODES = {"compile_time_exceeded", "nested_too_deeply"}


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _side_expectations() -> dict[str, list[dict[str, Any]]]:
    return _load(SIDE_EXPECTATIONS) if SIDE_EXPECTATIONS.exists() else {}


def _expected_errors(path: Path) -> list[dict[str, Any]]:
    raw = _load(path)
    side = _side_expectations()
    inline = raw.get("expect") if isinstance(raw, dict) else None
    assert (inline is None) != (path.name not in side), (
        f"{path.name}: give its expectations exactly once, inline under 'expect' or in expectations.json"
    )
    return inline if inline is not None else side[path.name]


def _params(paths: list[Path]) -> list[Any]:
    params = []
    for path in paths:
        marks = [pytest.mark.xfail(reason=KNOWN_BUGS[path.name], strict=True)] if path.name in KNOWN_BUGS else []
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def _compile(path: Path) -> CompileResult:
    return compile_canvas(_load(path), build_registry())


def _key(item: dict[str, Any] | Issue) -> tuple[str, str | None, str | None]:
    if isinstance(item, Issue):
        return item.code, item.node_id, item.edge_id
    return item["code"], item.get("node_id"), item.get("edge_id")


def assert_issues_match(actual: list[Issue], expected: list[dict[str, Any]], what: str) -> None:
    """Exact multiset of (code, node_id, edge_id); fields where the expectation gives one."""
    got, want = Counter(map(_key, actual)), Counter(map(_key, expected))
    listing = "\n".join(f"  {issue}" for issue in actual) or "  (none)"
    assert got == want, (
        f"{what} differ\n unexpected: {sorted((got - want).elements())}\n"
        f" missing: {sorted((want - got).elements())}\n reported:\n{listing}"
    )
    remaining = Counter((*_key(issue), issue.field) for issue in actual)
    for item in expected:
        if "field" in item:
            wanted = (*_key(item), item["field"])
            assert remaining[wanted] > 0, f"no {what[:-1]} {wanted} among:\n{listing}"
            remaining[wanted] -= 1


# --------------------------------------------------------------------------- the folders


def test_side_expectations_name_existing_non_object_canvases():
    for name in _side_expectations():
        path = FIXTURES / "invalid" / name
        assert path.exists(), name
        assert not isinstance(_load(path), dict), f"{name} is an object: put its expectations inline"


def test_top_level_expect_key_is_ignored_by_the_compiler():
    """Verified, not assumed: an unknown top-level key yields no issue and no plan change."""
    canvas = {
        "nodes": [{"id": "s", "type": "start"}, {"id": "e", "type": "end"}],
        "edges": [{"id": "e1", "source": "s", "target": "e"}],
    }
    plain = compile_canvas(canvas, build_registry())
    annotated = compile_canvas({**canvas, "expect": [{"code": "cycle", "node_id": "s"}]}, build_registry())
    assert plain.issues == annotated.issues == ()
    assert plain.plan is not None and annotated.plan is not None
    assert plain.plan.hash == annotated.plan.hash


def test_every_compile_issue_code_has_a_fixture():
    """Each code the compiler can emit (grepped from builder/) is shown by some fixture."""
    source = "\n".join(p.read_text() for p in (ROOT / "builder").glob("*.py"))
    codes = set(re.findall(r'Issue\(\s*"([a-z_]+)"', source))
    if "{namespace}_outside_container" in source:
        codes |= {"loop_outside_container", "parallel_outside_container"}
    codes -= RUN_TIME_CODES | GUARD_CODES
    shown = {item["code"] for path in INVALID for item in _expected_errors(path)}
    shown |= {item["code"] for path in VALID for item in _load(path)["expect"]["warnings"]}
    assert codes - shown == set()
    assert len(codes) >= 30  # the grep itself works


# --------------------------------------------------------------------------- valid canvases


@pytest.mark.parametrize("path", _params(VALID))
def test_valid_canvas_compiles(path: Path):
    raw = _load(path)
    result = _compile(path)
    assert result.errors == [], "\n".join(map(str, result.errors))
    assert result.ok and result.plan is not None
    assert_issues_match(result.warnings, raw["expect"]["warnings"], "warnings")

    plan = result.plan
    unreachable = {issue.node_id for issue in result.warnings if issue.code == "unreachable"}
    assert set(plan.nodes) == {node["id"] for node in raw["nodes"]} - unreachable
    # the plan is a JSON value with a content hash
    assert json.loads(json.dumps(plan.to_dict()))["nodes"]
    assert re.fullmatch(r"[0-9a-f]{64}", plan.hash)
    # every edge whose ends run is in the plan, with the handle it leaves on
    for edge in raw["edges"]:
        if edge["source"] in unreachable:
            continue
        planned = plan.edges[edge["id"]]
        assert (planned.source, planned.target) == (edge["source"], edge["target"])
        assert planned.handle == (edge.get("sourceHandle") or "source")


# --------------------------------------------------------------------------- invalid canvases


@pytest.mark.parametrize("path", _params(INVALID))
def test_invalid_canvas_reports_exactly_its_errors(path: Path):
    result = _compile(path)
    assert result.plan is None and not result.ok
    assert_issues_match(result.errors, _expected_errors(path), "errors")


def test_many_problems_are_reported_together():
    """One canvas, problems found by every stage, all in one result."""
    result = _compile(FIXTURES / "invalid" / "many_problems.json")
    codes = {issue.code for issue in result.errors}
    stages = {
        "parse": {"invalid_node", "duplicate_node_id", "reserved_id", "invalid_edge", "input_default_type"},
        "nodes": {"unknown_node_type", "invalid_config", "multiple_start"},
        "containers": {"unknown_parent"},
        "edges": {"dangling_edge", "edge_into_start", "unknown_handle", "unknown_operator"},
        "cycles": {"cycle"},
        "references": {
            "template_syntax",
            "unknown_reference",
            "reference_not_upstream",
            "loop_outside_container",
            "output_unknown_reference",
        },
    }
    for stage, expected in stages.items():
        assert expected <= codes, f"{stage}: missing {expected - codes}"
    assert len(codes) >= 18


@pytest.mark.parametrize(
    ("node_type", "data", "field", "message"),
    [
        (
            "condition",
            {
                "conditions": [
                    {"id": "a", "expression": "true"},
                    {"id": "a", "expression": "false"},
                    {"id": "b", "expression": "true"},
                ]
            },
            "data.conditions",
            "condition ids must be unique; repeated: a",
        ),
        (
            "router",
            {"prompt": "{{ inputs.text }}", "routes": [{"id": "x"}, {"id": "y"}, {"id": "y"}, {"id": "x"}]},
            "data.routes",
            "route ids must be unique; repeated: x, y",
        ),
    ],
)
def test_ids_that_name_one_handle_twice_are_refused(node_type: str, data: dict[str, Any], field: str, message: str):
    raw = {
        "name": "ids",
        "nodes": [{"id": "start", "type": "start"}, {"id": "pick", "type": node_type, "data": data}],
        "edges": [{"source": "start", "target": "pick"}],
    }
    [issue] = compile_canvas(raw, build_registry()).errors
    assert (issue.code, issue.node_id, issue.field) == ("invalid_config", "pick", field)
    assert message in issue.message
