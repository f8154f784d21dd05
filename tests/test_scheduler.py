"""The pure scheduling rules: readiness, joins, skip propagation, error edges."""

from __future__ import annotations

from builder.plan import TOP
from flows.scheduler import ScopeScheduler
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
    plan = compiled(canvas(
        [condition("cond", "x"), node("a"), node("b"), node("m", "merge")],
        [("cond", "a", "condition-x"), ("cond", "b", "else"), ("a", "m"), ("b", "m")]))
    sched = ScopeScheduler(plan, TOP)
    sched.start()
    step = sched.resolve("cond", edges_of(plan, "cond", "condition-x"))
    assert step.ready == ["a"] and step.skipped == ["b"]
    assert sched.resolve("a", edges_of(plan, "a")).ready == ["m"]


def test_condition_without_match_and_no_else_edge_skips_everything_downstream():
    plan = compiled(canvas([condition("cond", "x"), node("a"), node("b")],
                           [("cond", "a", "condition-x"), ("a", "b")]))
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
    assert sched.resolve("b", edges_of(plan, "b")) .ready == []


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
    plan = compiled(canvas([node("a"), node("b"), node("c"), node("d"), node("j")],
                           [("a", "b"), ("b", "c"), ("c", "j"), ("d", "j")]))
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
