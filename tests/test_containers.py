"""Loop and parallel containers, in-process: identity, isolation, nesting, errors."""

from __future__ import annotations

import pytest

from tests.support import JOURNAL, canvas, node
from tests.test_engine import run


@pytest.fixture(autouse=True)
def _clean_journal():
    JOURNAL.clear()


def body(node_id, parent, node_type="transform", **fields):
    return node(node_id, node_type, parentId=parent, **fields)


def trace_of(result, node_id):
    return [(t["path"], t["status"]) for t in result["trace"] if t["node_id"] == node_id]


async def test_for_loop_runs_in_order_with_loop_variables():
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": 3}),
            body(
                "step",
                "lp",
                data={
                    "output": {
                        "i": "{{ loop.index }}",
                        "n": "{{ loop.iteration }}",
                        "total": "{{ loop.total }}",
                        "before": "{{ loop.results | length }}",
                    }
                },
            ),
        ]
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["output"] == {
        "results": [
            {"i": 0, "n": 1, "total": 3, "before": 0},
            {"i": 1, "n": 2, "total": 3, "before": 1},
            {"i": 2, "n": 3, "total": 3, "before": 2},
        ],
        "iterations": 3,
    }
    assert trace_of(result, "step") == [([0], "completed"), ([1], "completed"), ([2], "completed")]


async def test_for_each_over_a_template_reads_upstream():
    raw = canvas(
        [
            node("src", data={"output": ["a", "b"]}),
            node("lp", "loop", data={"mode": "forEach", "items": "{{ src }}"}),
            body("up", "lp", data={"output": "{{ loop.item | upper }}"}),
        ],
        [("src", "lp")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["output"]["results"] == ["A", "B"]


async def test_while_and_do_while_conditions():
    raw = canvas(
        [
            node("w", "loop", data={"mode": "while", "condition": "loop.index < 2"}),
            body("wb", "w", data={"output": "{{ loop.index }}"}),
            node("d", "loop", data={"mode": "doWhile", "condition": "false"}),
            body("db", "d", data={"output": "once"}),
        ]
    )
    result, _ = await run(raw)
    assert result["nodes"]["w"]["output"] == {"results": [0, 1], "iterations": 2}
    assert result["nodes"]["d"]["output"] == {"results": ["once"], "iterations": 1}


async def test_while_hitting_max_iterations_fails_and_routes_the_error_edge():
    raw = canvas(
        [
            node("w", "loop", data={"mode": "while", "condition": "true", "max_iterations": 4}),
            body("wb", "w"),
            node("after"),
            node("on_error", data={"output": "{{ w.error.type }}"}),
        ],
        [("w", "after"), ("w", "on_error", "error")],
    )
    result, _ = await run(raw)
    assert result["status"] == "completed"
    assert result["nodes"]["w"]["status"] == "failed"
    assert "max_iterations=4" in result["nodes"]["w"]["error"]["message"]
    assert result["nodes"]["after"]["status"] == "skipped"
    assert result["nodes"]["on_error"]["output"] == "MaxIterationsExceeded"
    assert len(trace_of(result, "wb")) == 4


async def test_condition_dead_end_inside_a_loop_ends_only_that_iteration():
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "forEach", "items": [1, 5, 2, 7]}),
            body("big", "lp", "condition", data={"conditions": [{"id": "yes", "expression": "loop.item > 3"}]}),
            body("keep", "lp", data={"output": "{{ loop.item }}"}),
        ],
        [("big", "keep", "condition-yes")],
    )
    result, _ = await run(raw)
    # Two terminals? No: 'keep' is the only terminal; skipped iterations give None.
    assert result["nodes"]["lp"]["output"]["results"] == [None, 5, None, 7]
    assert result["nodes"]["lp"]["status"] == "completed"


async def test_join_after_condition_inside_each_parallel_branch():
    raw = canvas(
        [
            node("par", "parallel", data={"mode": "collection", "items": [1, 2, 3, 4]}),
            body(
                "even", "par", "condition", data={"conditions": [{"id": "e", "expression": "parallel.item % 2 == 0"}]}
            ),
            body("a", "par", data={"output": "even {{ parallel.item }}"}),
            body("b", "par", data={"output": "odd {{ parallel.item }}"}),
            body("m", "par", data={"output": "{{ a if a is not none else b }}"}),
        ],
        [("even", "a", "condition-e"), ("even", "b", "else"), ("a", "m"), ("b", "m")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["par"]["output"] == {"results": ["odd 1", "even 2", "odd 3", "even 4"], "errors": []}


async def test_error_edge_inside_a_body():
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": 2}),
            body("f", "lp", "test_flaky", data={"failures": 9, "retry_class": None}),
            body("fix", "lp", data={"output": "recovered {{ loop.index }}"}),
        ],
        [("f", "fix", "error")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["output"]["results"] == ["recovered 0", "recovered 1"]


async def test_parallel_collect_versus_fail_fast():
    def build(on_error):
        return canvas(
            [
                node("par", "parallel", data={"mode": "count", "count": 3, "on_error": on_error}),
                body(
                    "f",
                    "par",
                    "test_flaky",
                    data={
                        "failures": "{{ 9 if parallel.index == 1 else 0 }}",
                        "retry_class": None,
                        "value": "{{ parallel.index }}",
                    },
                ),
            ]
        )

    collected, _ = await run(build("collect"))
    out = collected["nodes"]["par"]["output"]
    assert collected["status"] == "completed"
    assert out["results"] == [0, None, 2]
    assert [e["index"] for e in out["errors"]] == [1]
    assert "branch 1" in out["errors"][0]["error"]["message"]
    failed, _ = await run(build("fail_fast"))
    assert failed["status"] == "failed"
    assert failed["nodes"]["par"]["status"] == "failed"


async def test_empty_collection_completes_with_no_branches():
    raw = canvas(
        [
            node("par", "parallel", data={"mode": "collection", "items": []}),
            body("x", "par"),
            node("after", data={"output": "{{ par.results | length }}"}),
        ],
        [("par", "after")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["par"]["output"] == {"results": [], "errors": []}
    assert result["nodes"]["after"]["output"] == 0


async def test_container_on_a_skipped_branch_is_skipped_with_its_downstream():
    raw = canvas(
        [
            node("cond", "condition", data={"conditions": [{"id": "no", "expression": "false"}]}),
            node("lp", "loop", data={"mode": "for", "count": 2}),
            body("b", "lp"),
            node("after"),
        ],
        [("cond", "lp", "condition-no"), ("lp", "after")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["status"] == "skipped"
    assert result["nodes"]["after"]["status"] == "skipped"
    assert trace_of(result, "b") == []


async def test_parallel_branches_overlap_up_to_max_concurrency():
    raw = canvas(
        [
            node("par", "parallel", data={"mode": "count", "count": 4, "max_concurrency": 2}),
            body("s", "par", "test_sleep", data={"seconds": 0.2}),
        ]
    )
    await run(raw)
    spans = sorted(JOURNAL.spans.values())
    # At most two in flight at any start instant, and the first two really overlap.
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2
    assert spans[1][0] < spans[0][1]


async def test_nested_parallel_of_loops_paths_and_results():
    raw = canvas(
        [
            node("par", "parallel", data={"mode": "collection", "items": ["x", "y"]}),
            body("lp", "par", "loop", data={"mode": "for", "count": 2}),
            body("cell", "lp", data={"output": "{{ parallel.item }}{{ loop.index }}"}),
        ]
    )
    result, _ = await run(raw)
    assert result["nodes"]["par"]["output"]["results"] == [
        {"results": ["x0", "x1"], "iterations": 2},
        {"results": ["y0", "y1"], "iterations": 2},
    ]
    assert sorted(p for p, _ in trace_of(result, "cell")) == [[0, 0], [0, 1], [1, 0], [1, 1]]


async def test_nested_loop_of_parallels_paths_and_results():
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": 2}),
            body("par", "lp", "parallel", data={"mode": "count", "count": 3}),
            body("cell", "par", data={"output": "{{ loop.index * 10 + parallel.index }}"}),
        ]
    )
    result, _ = await run(raw)
    assert [r["results"] for r in result["nodes"]["lp"]["output"]["results"]] == [[0, 1, 2], [10, 11, 12]]
    assert sorted(p for p, _ in trace_of(result, "cell")) == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


async def test_body_reads_nodes_upstream_of_its_container():
    raw = canvas(
        [
            node("cfg", data={"output": {"prefix": ">"}}),
            node("lp", "loop", data={"mode": "for", "count": 2}),
            body("b", "lp", data={"output": "{{ cfg.prefix }}{{ loop.index }}"}),
        ],
        [("cfg", "lp")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["output"]["results"] == [">0", ">1"]


async def test_several_terminals_give_a_mapping_per_iteration():
    raw = canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": 1}),
            body("a", "lp", data={"output": 1}),
            body("b", "lp", data={"output": 2}),
        ]
    )
    result, _ = await run(raw)
    assert result["nodes"]["lp"]["output"]["results"] == [{"a": 1, "b": 2}]
