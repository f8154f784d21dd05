"""The run's rules without Prefect or an engine: readiness, joins, skip propagation
(``ScopeScheduler``), and which edges fire, error routing, fail-fast/continue and what a
scope returns (``ScopeRun``, ``scope_result``)."""

from __future__ import annotations

from builder.compiler import compile_canvas
from builder.plan import TOP
from flows.scheduler import NodeFailure, NodeResult, ScopeResult, ScopeRun, ScopeScheduler, scope_result
from node_handlers.registry import build_registry
from tests.support import canvas, compiled, node


def condition(node_id: str, *ids: str) -> dict:
    return node(node_id, "condition", data={"conditions": [{"id": i, "expression": "true"} for i in ids]})


def edges_of(plan, source: str, handle: str = "source") -> set[str]:
    return {e for e in plan.nodes[source].outgoing if plan.edges[e].handle == handle}


def test_roots_start_and_a_chain_runs_in_order():
    plan = compiled(canvas([node("a"), node("b"), node("c")], [("a", "b"), ("b", "c")]))
    sched = ScopeScheduler(plan, TOP)
    assert sched.start() == ["a"]
    assert sched.resolve("a", edges_of(plan, "a")).ready == ["b"]
    assert sched.resolve("b", edges_of(plan, "b")).ready == ["c"]
    assert sched.resolve("c", set()).ready == []


def test_diamond_after_condition_joins_only_the_branch_taken():
    plan = compiled(
        canvas(
            [condition("cond", "x"), node("a"), node("b"), node("m", "merge")],
            [("cond", "a", "condition-x"), ("cond", "b", "else"), ("a", "m"), ("b", "m")],
        )
    )
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    step = sched.resolve("cond", edges_of(plan, "cond", "condition-x"))
    assert step.ready == ["a"] and step.skipped == ["b"]
    assert sched.resolve("a", edges_of(plan, "a")).ready == ["m"]


def test_condition_without_match_and_no_else_edge_skips_everything_downstream():
    plan = compiled(canvas([condition("cond", "x"), node("a"), node("b")], [("cond", "a", "condition-x"), ("a", "b")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    step = sched.resolve("cond", set())  # "else" selected, but nothing is connected to it
    assert step.ready == [] and step.skipped == ["a", "b"]


def test_success_and_error_edges_into_the_same_target():
    raw = canvas([node("n"), node("t")], [("n", "t"), ("n", "t", "error")])
    plan = compiled(raw)
    ok = ScopeScheduler(plan, TOP)
    ok.start()
    assert ok.resolve("n", edges_of(plan, "n")).ready == ["t"]
    failed = ScopeScheduler(plan, TOP)
    failed.start()
    assert failed.resolve("n", edges_of(plan, "n", "error")).ready == ["t"]


def test_several_error_edges_into_one_join():
    plan = compiled(canvas([node("a"), node("b"), node("j")], [("a", "j", "error"), ("b", "j", "error")]))
    all_ok = ScopeScheduler(plan, TOP)
    assert all_ok.start() == ["a", "b"]
    assert all_ok.resolve("a", set()).skipped == []
    assert all_ok.resolve("b", set()).skipped == ["j"]  # nobody failed: the handler is skipped
    one_failed = ScopeScheduler(plan, TOP)
    one_failed.start()
    assert one_failed.resolve("a", edges_of(plan, "a", "error")).ready == []  # waits for b
    assert one_failed.resolve("b", set()).ready == ["j"]


def test_join_any_runs_on_the_first_fired_edge_and_ignores_later_ones():
    plan = compiled(canvas([node("a"), node("b"), node("j", join="any")], [("a", "j"), ("b", "j")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    assert sched.resolve("a", edges_of(plan, "a")).ready == ["j"]
    assert sched.resolve("b", edges_of(plan, "b")).ready == []


def test_join_any_is_skipped_only_when_every_edge_is_dead():
    plan = compiled(canvas([node("a"), node("b"), node("j", join="any")], [("a", "j"), ("b", "j")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    assert sched.resolve("a", set()).skipped == []
    assert sched.resolve("b", set()).skipped == ["j"]


def test_join_all_waits_for_every_edge():
    plan = compiled(canvas([node("a"), node("b"), node("j")], [("a", "j"), ("b", "j")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    assert sched.resolve("a", edges_of(plan, "a")).ready == []
    assert sched.resolve("b", set()).ready == ["j"]  # b's edge dead, a's fired: runs


def test_skips_propagate_through_chains_but_stop_at_live_joins():
    plan = compiled(
        canvas(
            [node("a"), node("b"), node("c"), node("d"), node("j")], [("a", "b"), ("b", "c"), ("c", "j"), ("d", "j")]
        )
    )
    sched = ScopeScheduler(plan, TOP)
    assert sched.start() == ["a", "d"]
    step = sched.resolve("a", set())
    assert step.skipped == ["b", "c"]
    assert sched.resolve("d", edges_of(plan, "d")).ready == ["j"]


def test_undecided_lists_nodes_that_never_ran():
    plan = compiled(canvas([node("a"), node("b")], [("a", "b")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    assert sched.undecided() == ["b"]


# --------------------------------------------------------------------------- ScopeRun: the rules on outcomes
# Section 3 (which edges fire), 5 (errors, fail-fast/continue) and 6/1 (what a scope returns),
# fed outcomes by hand: no engine, no Prefect.


def plan_of(nodes: list[dict], edges: list = (), **extra):
    result = compile_canvas(canvas(nodes, edges, **extra), build_registry())
    assert result.ok, [str(i) for i in result.errors]
    return result.plan


def done(output=None, *handles: str) -> NodeResult:
    return NodeResult("completed", output, frozenset(handles or {"source"}))


def failed(node_id: str, error_type: str = "NodeError") -> NodeResult:
    return NodeResult(
        "failed", error={"message": f"{node_id} broke", "type": error_type, "node_id": node_id, "attempts": 1}
    )


def no_scope():
    raise AssertionError("no edge condition is on a selected handle: the scope must not be built")


def outputs_scope(state: ScopeRun):
    """The template scope an edge condition sees: here, just the scope's outputs by name."""
    return lambda: dict(state.outputs)


def when(field: str, operator: str, value=None) -> dict:
    return {"condition": {"field": field, "operator": operator, "value": value}}


def edge(edge_id: str, source: str, target: str, handle: str | None = None, **data) -> dict:
    return {"id": edge_id, "source": source, "target": target, "sourceHandle": handle, "data": data or None}


# --- section 3: which edges fire


def test_success_fires_source_edges_and_leaves_error_edges_dead():
    plan = plan_of([node("n"), node("a"), node("h")], [("n", "a"), ("n", "h", "error")])
    state = ScopeRun(plan, TOP)
    assert state.start() == ["n"]
    decision = state.node_ended("n", done("N"), no_scope)
    assert decision.fired == {"e0"}
    assert (decision.ready, decision.skipped, decision.failure) == (("a",), ("h",), None)
    assert state.outputs["n"] == "N"


def test_failure_fires_only_error_edges_which_see_the_error_as_output():
    plan = plan_of([node("n"), node("a"), node("h")], [("n", "a"), ("n", "h", "error")])
    state = ScopeRun(plan, TOP)
    state.start()
    outcome = failed("n")
    decision = state.node_ended("n", outcome, no_scope)
    assert decision.fired == {"e1"}
    assert (decision.ready, decision.skipped, decision.failure) == (("h",), ("a",), None)
    assert state.outputs["n"] == {"error": outcome.error}
    assert not state.stopping and state.failures == []


def test_a_failure_never_fires_source_edges_even_when_its_handles_name_source():
    plan = plan_of([node("n"), node("a")], [("n", "a")])
    state = ScopeRun(plan, TOP)
    state.start()
    outcome = NodeResult("failed", handles=frozenset({"source"}), error=failed("n").error)
    decision = state.node_ended("n", outcome, no_scope)
    assert decision.fired == frozenset() and decision.skipped == ("a",)


def test_selected_handles_fire_their_edges_only():
    plan = plan_of(
        [condition("cond", "x", "y"), node("x"), node("y"), node("other")],
        [("cond", "x", "condition-x"), ("cond", "y", "condition-y"), ("cond", "other", "else")],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("cond", done({"matched": ["x", "y"]}, "condition-x", "condition-y"), no_scope)
    assert decision.ready == ("x", "y") and decision.skipped == ("other",)


def test_edge_conditions_gate_edges_on_the_selected_handle():
    plan = plan_of(
        [node("src"), node("ok"), node("missing")],
        [
            edge("e1", "src", "ok", **when("{{ src.status }}", "lt", 400)),
            edge("e2", "src", "missing", **when("{{ src.status }}", "eq", 404)),
        ],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("src", done({"status": 404}), outputs_scope(state))
    assert decision.fired == {"e2"}
    assert decision.ready == ("missing",) and decision.skipped == ("ok",)


def test_a_condition_on_an_unselected_handle_is_not_evaluated():
    plan = plan_of(
        [condition("cond", "x"), node("a"), node("b")],
        [
            edge("e1", "cond", "a", "condition-x"),
            edge("e2", "cond", "b", "else", **when("{{ cond.missing }}", "exists")),
        ],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("cond", done({"matched": ["x"]}, "condition-x"), no_scope)
    assert decision.ready == ("a",) and decision.skipped == ("b",)


def test_the_condition_scope_is_built_once_per_node_end():
    plan = plan_of(
        [node("src"), node("a"), node("b")],
        [edge("e1", "src", "a", **when("{{ src }}", "eq", 1)), edge("e2", "src", "b", **when("{{ src }}", "neq", 1))],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    built = []
    decision = state.node_ended("src", done(1), lambda: built.append(1) or {"src": state.outputs["src"]})
    assert built == [1] and decision.ready == ("a",)


def test_merge_upstream_holds_the_fired_inputs_only():
    plan = plan_of(
        [condition("cond", "x"), node("a"), node("b"), node("m", "merge")],
        [("cond", "a", "condition-x"), ("cond", "b", "else"), ("a", "m"), ("b", "m")],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    state.node_ended("cond", done({"matched": ["x"]}, "condition-x"), no_scope)
    assert state.node_ended("a", done("A"), no_scope).ready == ("m",)
    assert state.upstream("m") == {"a": "A"}


def test_merge_upstream_after_an_error_edge_is_the_error_output():
    plan = plan_of([node("a"), node("m", "merge")], [("a", "m", "error")])
    state = ScopeRun(plan, TOP)
    state.start()
    outcome = failed("a")
    state.node_ended("a", outcome, no_scope)
    assert state.upstream("m") == {"a": {"error": outcome.error}}


def test_join_any_starts_on_the_first_arrival_and_ignores_later_ones():
    plan = plan_of([node("a"), node("b"), node("j", join="any")], [("a", "j"), ("b", "j")])
    state = ScopeRun(plan, TOP)
    state.start()
    assert state.node_ended("a", done("A"), no_scope).ready == ("j",)
    assert state.upstream("j") == {"a": "A"}  # what j runs with: taken when it starts
    assert state.node_ended("b", done("B"), no_scope).ready == ()


def test_skips_propagate_from_a_dead_branch_through_a_container():
    plan = plan_of(
        [
            condition("cond", "no"),
            node("lp", "loop", data={"mode": "for", "count": 2}),
            node("body", parentId="lp"),
            node("after"),
        ],
        [("cond", "lp", "condition-no"), ("lp", "after")],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("cond", done({"matched": []}, "else"), no_scope)
    assert decision.ready == () and decision.skipped == ("lp", "after")


# --- section 5: errors


def test_a_broken_edge_condition_fails_the_node():
    plan = plan_of([node("src"), node("next")], [edge("e1", "src", "next", **when("{{ src.nope }}", "exists"))])
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("src", done({"status": 200}), outputs_scope(state), attempts=2)
    assert decision.broken_condition == {
        "message": "'src' has no attribute 'nope'",
        "type": "TemplateRenderError",
        "node_id": "src",
        "attempts": 2,
    }
    assert decision.fired == frozenset() and decision.skipped == ("next",)
    assert decision.failure == NodeFailure("src", (), decision.broken_condition)
    assert state.outputs["src"] == {"error": decision.broken_condition}
    assert state.stopping
    result = state.result()
    assert result.failed and result.output is None


def test_a_condition_that_cannot_compare_its_values_fails_the_node_and_its_error_edge_catches_it():
    plan = plan_of(
        [node("src"), node("next"), node("handler")],
        [edge("e1", "src", "next", **when("{{ src }}", "gt", 3)), edge("e2", "src", "handler", "error")],
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("src", done("text"), outputs_scope(state))
    assert decision.broken_condition["type"] == "ConditionError"
    assert decision.broken_condition["message"].startswith("edge e1: gt cannot compare")
    assert decision.failure is None and decision.ready == ("handler",) and decision.skipped == ("next",)
    assert not state.result().failed


def test_an_error_edge_whose_condition_does_not_hold_leaves_the_failure_uncaught():
    plan = plan_of(
        [node("n"), node("retry_later")],
        [edge("e1", "n", "retry_later", "error", **when("{{ n.error.type }}", "eq", "Timeout"))],
    )
    caught, uncaught = ScopeRun(plan, TOP), ScopeRun(plan, TOP)
    for state in (caught, uncaught):
        state.start()
    assert caught.node_ended("n", failed("n", "Timeout"), outputs_scope(caught)).ready == ("retry_later",)
    decision = uncaught.node_ended("n", failed("n", "NodeError"), outputs_scope(uncaught))
    assert decision.skipped == ("retry_later",)
    assert decision.failure is not None and uncaught.failures == [decision.failure]


def test_a_broken_condition_on_an_error_edge_catches_nothing():
    plan = plan_of(
        [node("n"), node("handler")], [edge("e1", "n", "handler", "error", **when("{{ n.error.nope }}", "exists"))]
    )
    state = ScopeRun(plan, TOP)
    state.start()
    decision = state.node_ended("n", failed("n"), outputs_scope(state))
    assert decision.failure is not None and decision.skipped == ("handler",)


def test_fail_fast_starts_nothing_new_and_cancels_what_would_run():
    plan = plan_of([node("bad"), node("b"), node("c"), node("d")], [("b", "c"), ("c", "d")])
    state = ScopeRun(plan, TOP)
    assert state.start() == ["b", "bad"]
    decision = state.node_ended("bad", failed("bad"), no_scope)
    assert decision.failure == NodeFailure("bad", (), failed("bad").error) and state.stopping
    assert state.node_ended("b", done("B"), no_scope).cancelled == ("c",)  # b was running: it may end
    assert state.never_started() == ["d"]
    assert [f.node_id for f in state.result().failures] == ["bad"]


def test_continue_skips_the_failed_branch_and_lists_every_failure():
    plan = plan_of(
        [node("bad1"), node("bad2"), node("after_bad"), node("good"), node("after_good")],
        [("bad1", "after_bad"), ("good", "after_good")],
        settings={"on_error": "continue"},
    )
    state = ScopeRun(plan, TOP, on_error="continue")
    state.start()
    assert state.node_ended("bad1", failed("bad1"), no_scope).skipped == ("after_bad",)
    assert state.node_ended("good", done(), no_scope).ready == ("after_good",)
    assert state.node_ended("bad2", failed("bad2"), no_scope).failure is not None
    assert not state.stopping and state.never_started() == []
    assert [f.node_id for f in state.result().failures] == ["bad1", "bad2"]


def test_a_caught_failure_does_not_stop_the_scope():
    plan = plan_of([node("bad"), node("fix"), node("other")], [("bad", "fix", "error")])
    state = ScopeRun(plan, TOP)
    state.start()
    state.node_ended("bad", failed("bad"), no_scope)
    assert not state.stopping
    assert state.node_ended("other", done(), no_scope).cancelled == ()


def test_failures_carry_the_path_of_their_scope_execution():
    plan = plan_of([node("lp", "loop", data={"mode": "for", "count": 3}), node("step", parentId="lp")])
    state = ScopeRun(plan, "lp", path=(2,))
    assert state.start() == ["step"]
    assert state.node_ended("step", failed("step"), no_scope).failure.path == (2,)


# --- sections 6 and 1: what a scope returns


def loop_body(*body: dict, edges: list = ()):
    return plan_of([node("lp", "loop", data={"mode": "for", "count": 1}), *body], edges)


def test_body_result_is_the_single_terminal_output_or_none_when_it_did_not_complete():
    plan = loop_body(node("a", parentId="lp"), node("b", parentId="lp"), edges=[("a", "b")])
    assert scope_result(plan, "lp", {"a": 1, "b": 2}, kind="body") == 2
    assert scope_result(plan, "lp", {"a": 1}, kind="body") is None


def test_body_result_of_several_terminals_maps_the_completed_ones():
    plan = loop_body(node("a", parentId="lp"), node("b", parentId="lp"), node("c", parentId="lp"), edges=[("a", "b")])
    assert scope_result(plan, "lp", {"a": 1, "b": 2, "c": 3}, kind="body") == {"b": 2, "c": 3}
    assert scope_result(plan, "lp", {"a": 1, "c": 3}, kind="body") == {"c": 3}


def test_run_result_maps_the_terminals_even_when_there_is_one():
    # The same one-terminal shape: a body gives the bare output, a run names where it comes from.
    plan = plan_of([node("a"), node("t")], [("a", "t")])
    assert scope_result(plan, TOP, {"a": 1, "t": 2}, kind="run") == {"t": 2}
    assert scope_result(plan, TOP, {"a": 1}, kind="run") == {}


def test_run_result_is_the_single_completed_end_node_or_a_mapping_of_the_completed_ones():
    plan = plan_of(
        [
            condition("cond", "x"),
            node("e1", "end", data={"output": 1}),
            node("e2", "end", data={"output": 2}),
            node("stray"),
        ],
        [("cond", "e1", "condition-x"), ("cond", "e2", "else")],
    )
    assert scope_result(plan, TOP, {"cond": {}, "e1": 1, "stray": "s"}, kind="run") == 1
    assert scope_result(plan, TOP, {"cond": {}, "e1": 1, "e2": 2}, kind="run") == {"e1": 1, "e2": 2}
    assert scope_result(plan, TOP, {"cond": {}, "stray": "s"}, kind="run") == {}


def test_run_result_renders_the_document_output_with_nodes_that_did_not_complete_as_none():
    plan = plan_of(
        [node("a"), node("b")],
        output={
            "a": "{{ a }}",
            "b_missing": "{{ b is none }}",
            "via_nodes": "{{ nodes.a }}",
            "who": "{{ inputs.who }}",
        },
    )
    assert scope_result(plan, TOP, {"a": "A"}, kind="run", template_scope={"inputs": {"who": "Ada"}}) == {
        "a": "A",
        "b_missing": True,
        "via_nodes": "A",
        "who": "Ada",
    }


def test_a_scope_run_returns_its_result_and_reports_a_broken_document_output():
    ok = plan_of([node("a")], output={"x": "{{ a }}"})
    state = ScopeRun(ok, TOP)
    state.start()
    state.node_ended("a", done("A"), no_scope)
    assert state.result() == ScopeResult(output={"x": "A"})
    broken = plan_of([node("a", data={"output": {"y": 1}})], output="{{ a.nope }}")
    state = ScopeRun(broken, TOP)
    state.start()
    state.node_ended("a", done({"y": 1}), no_scope)
    result = state.result()
    assert not result.failed and result.output_error == "'a' has no attribute 'nope'"


def test_a_body_scope_run_returns_its_body_result_without_the_failed_nodes():
    plan = loop_body(node("f", parentId="lp"), node("fix", parentId="lp"), edges=[("f", "fix", "error")])
    state = ScopeRun(plan, "lp", path=(0,))
    state.start()
    state.node_ended("f", failed("f"), no_scope)
    state.node_ended("fix", done("recovered"), no_scope)
    assert state.result() == ScopeResult(output="recovered")
