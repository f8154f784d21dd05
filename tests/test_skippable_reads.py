"""The compiler warns about templates reading into a node that may be skipped, and
templates have ``coalesce`` (issue 31, major 4)."""

from __future__ import annotations

from typing import Any

import pytest

from builder.compiler import compile_canvas
from builder.templates import render_value
from tests.support import canvas, make_registry, node

ROUTE = node("route", "condition", data={"conditions": [{"id": "refund", "expression": "inputs.refund"}]})


def warnings_of(raw: dict[str, Any]) -> list[tuple[str | None, str | None, tuple[str, ...]]]:
    result = compile_canvas(raw, make_registry())
    assert result.ok, [str(i) for i in result.errors]
    return [(w.node_id, w.field, w.related) for w in result.warnings if w.code == "reads_skippable_node"]


def branches(output: Any = None, reader_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """start -> route; route(refund) -> refund; route(else) -> assign; both -> reader."""
    return canvas(
        [
            node("start", "start"),
            ROUTE,
            node("refund", data={"output": {"body": {"refund_id": "r-1"}}}),
            node("assign", data={"output": {"id": "a-1"}}),
            node("reader", data=reader_data or {"output": "done"}),
        ],
        [
            ("start", "route"),
            ("route", "refund", "condition-refund"),
            ("route", "assign", "else"),
            ("refund", "reader"),
            ("assign", "reader"),
        ],
        output=output,
    )


def test_the_workflow_output_reading_into_an_untaken_branch_is_a_warning_naming_both():
    raw = branches(output={"refund": "{{ refund.body.refund_id }}"})
    assert warnings_of(raw) == [(None, "output.refund", ("refund",))]
    result = compile_canvas(raw, make_registry())
    (warning,) = [w for w in result.warnings if w.code == "reads_skippable_node"]
    assert "'route' fires its 'condition-refund' handle" in warning.message
    assert "coalesce" in warning.message


def test_a_node_reading_into_a_branch_that_may_not_have_run_is_a_warning():
    raw = branches(reader_data={"output": {"id": "{{ assign.id }}", "r": "x {{ refund.body.refund_id }}"}})
    assert sorted(warnings_of(raw)) == [
        ("reader", "data.output.id", ("assign",)),
        ("reader", "data.output.r", ("refund",)),
    ]


@pytest.mark.parametrize(
    "template",
    [
        "{{ refund }}",  # read whole: none when skipped, no failure
        "{{ coalesce(refund and refund.body.refund_id, assign and assign.id) }}",
        "{{ refund.body.refund_id if refund else 'none' }}",
        "{% if refund %}{{ refund.body.refund_id }}{% endif %}",
        "{{ inputs.refund }}",
    ],
)
def test_guarded_or_whole_reads_are_not_reported(template):
    assert warnings_of(branches(output={"x": template})) == []


def test_a_reader_behind_the_same_handle_or_after_the_node_is_not_warned():
    raw = canvas(
        [
            node("start", "start"),
            ROUTE,
            node("refund", data={"output": {"body": {"refund_id": "r-1"}}}),
            node("notify", data={"output": "{{ refund.body.refund_id }}"}),
            node("audit", data={"output": "{{ refund.body.refund_id }}"}),
            node("plain", data={"output": {"v": 1}}),
            node("after", data={"output": "{{ plain.v }}"}),
        ],
        [
            ("start", "route"),
            ("route", "refund", "condition-refund"),
            ("refund", "notify"),  # runs only after refund ran
            ("route", "audit", "condition-refund"),  # behind the very handle refund is behind
            ("refund", "audit"),
            ("start", "plain"),
            ("plain", "after"),
        ],
        output={"plain": "{{ plain.v }}", "first": "{{ start.x }}"},
    )
    assert warnings_of(raw) == []


def test_an_edge_condition_and_an_error_handle_count_as_conditional():
    raw = canvas(
        [
            node("start", "start"),
            node("a", data={"output": {"n": 1}}),
            node("gated", data={"output": {"v": 2}}),
            node("fallback", data={"output": {"v": 3}}),
        ],
        [
            {
                "id": "gate",
                "source": "start",
                "target": "gated",
                "data": {"condition": {"field": "{{ inputs.go }}", "operator": "is_true"}},
            },
            ("start", "a"),
            ("a", "fallback", "error"),
        ],
        output={"g": "{{ gated.v }}", "f": "{{ nodes['fallback'].v }}", "a": "{{ a.n }}"},
    )
    assert sorted(warnings_of(raw)) == [(None, "output.f", ("fallback",)), (None, "output.g", ("gated",))]
    messages = [w.message for w in compile_canvas(raw, make_registry()).warnings]
    assert any("the condition of edge 'gate' holds" in m for m in messages)


def test_a_warning_does_not_stop_the_save_and_the_plan_is_built():
    result = compile_canvas(branches(output={"r": "{{ refund.body.refund_id }}"}), make_registry())
    assert result.ok and result.plan is not None and result.errors == []


def test_coalesce_gives_the_first_value_that_is_not_none():
    scope = {"refund": None, "assign": {"id": "a-1"}, "inputs": {}}
    assert render_value("{{ coalesce(refund and refund.body.refund_id, assign.id) }}", scope, field="f") == "a-1"
    assert render_value("{{ coalesce(refund, {}) }}", scope, field="f") == {}
    assert render_value("{{ coalesce(none, 0, 5) }}", scope, field="f") == 0  # 0 is not none
    assert render_value("{{ coalesce() }}", scope, field="f") is None
    assert render_value("{{ coalesce(refund) }}", scope, field="f") is None


def test_coalesce_is_a_reserved_id():
    result = compile_canvas(
        canvas([node("start", "start"), node("coalesce")], [("start", "coalesce")]), make_registry()
    )
    assert any(i.code == "reserved_id" and i.node_id == "coalesce" for i in result.errors), result.errors


def test_branches_that_meet_again_make_their_meeting_point_certain():
    """examples/hello.json's shape: both outcomes of a condition lead to ``fan``, which
    therefore always runs; reading into it is safe, reading into one branch is not."""
    raw = canvas(
        [
            node("start", "start"),
            ROUTE,
            node("yes", data={"output": {"v": 1}}),
            node("no", data={"output": {"v": 2}}),
            node("fan", data={"output": {"v": 3}}),
            node("half", data={"output": {"v": 4}}),
        ],
        [
            ("start", "route"),
            ("route", "yes", "condition-refund"),
            ("route", "no", "else"),
            ("yes", "fan"),
            ("no", "fan"),
            ("route", "half", "condition-refund"),
        ],
        output={"fan": "{{ fan.v }}", "yes": "{{ yes.v }}", "half": "{{ half.v }}"},
    )
    assert sorted(warnings_of(raw)) == [(None, "output.half", ("half",)), (None, "output.yes", ("yes",))]


def test_the_example_canvases_have_no_such_warning():
    import json
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "examples").glob("*.json")):
        assert warnings_of(json.loads(path.read_text())) == [], path


async def test_validate_through_the_api_answers_the_warning(tmp_path):
    from api.settings import ApiSettings
    from tests.support import api_without_prefect

    settings = ApiSettings(
        home=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", api_keys="ada:ada-key"
    )
    async with api_without_prefect(settings, "ada-key") as client:
        answer = await client.post(
            "/api/workflows/validate", json={"canvas": branches(output={"r": "{{ refund.body.refund_id }}"})}
        )
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["valid"] is True, report
    (warning,) = [w for w in report["issues"] if w["code"] == "reads_skippable_node"]
    assert (warning["field"], warning["related"], warning["severity"]) == ("output.r", ["refund"], "warning")
