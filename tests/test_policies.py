"""The engine's policies (``flows.policies``), each a pure function: no Prefect, no run."""

from __future__ import annotations

import dataclasses

from builder.plan import TOP, CachePolicy, RetryPolicy
from flows.policies import (
    cache_key,
    is_dead_letter,
    journals_durably,
    kept_output,
    node_cache_key,
    oversize_error,
    restores,
    runs_inline,
)
from flows.scheduler import NodeResult, ScopeRun
from tests.support import canvas, compiled, make_registry, node

REGISTRY = make_registry()


def planned(node_type: str = "transform", data: dict | None = None, **settings):
    """The plan node ``n`` of a one-node canvas, with ``settings`` replaced."""
    plan = compiled(canvas([node("n", node_type, data=data)]), REGISTRY)
    return dataclasses.replace(plan.nodes["n"], **settings)


def config_of(plan_node, **data):
    return REGISTRY.handler(plan_node.type).Config.model_validate({**plan_node.data, **data})


# --- cache key -----------------------------------------------------------------------------------------


def test_the_cache_key_is_the_same_for_the_same_work_only():
    n = planned("test_count", {"value": 1})
    key = cache_key(n, config_of(n), None)
    assert key == cache_key(n, config_of(n), None) and key.startswith("flowmaestro-test_count-")
    assert key != cache_key(n, config_of(n, value=2), None)
    assert key == cache_key(n, config_of(n, label="renamed"), None)  # a label is no work
    assert key != cache_key(dataclasses.replace(n, version="2"), config_of(n), None)
    assert key != cache_key(n, config_of(n), {"up": 1})


def test_upstream_outputs_enter_the_key_of_handlers_that_read_them_only():
    count, merge = planned("test_count", {"value": 1}), planned("merge")
    reads, ignores = REGISTRY.handler("merge"), REGISTRY.handler("test_count")
    assert reads.reads_upstream and not ignores.reads_upstream
    assert node_cache_key(count, ignores, config_of(count), {"a": 1}) == node_cache_key(
        count, ignores, config_of(count), {"a": 2}
    )
    assert node_cache_key(merge, reads, config_of(merge), {"a": 1}) != node_cache_key(
        merge, reads, config_of(merge), {"a": 2}
    )


# --- restore or execute --------------------------------------------------------------------------------


def test_only_a_completed_entry_with_the_same_key_of_a_replaying_node_restores():
    n = planned()
    assert restores(n, "completed", "k", "k")
    assert not restores(n, "completed", "k", "other")  # the configuration changed
    assert not restores(n, "failed", "k", "k")
    assert not restores(n, "started", "k", "k")  # a delay that started: it runs, waiting what is left
    assert not restores(n, None, None, "k")
    assert not restores(dataclasses.replace(n, replay=False), "completed", "k", "k")


# --- inline or task; durable or buffered -----------------------------------------------------------


def test_side_effect_free_nodes_without_retries_cache_or_timeout_run_inline():
    control, handler = planned(), REGISTRY.handler("transform")
    assert runs_inline(control, handler, inline_control=True)
    assert not runs_inline(control, handler, inline_control=False)
    assert not runs_inline(
        dataclasses.replace(control, retry=RetryPolicy(max_attempts=2)), handler, inline_control=True
    )
    assert not runs_inline(dataclasses.replace(control, cache=CachePolicy(enabled=True)), handler, inline_control=True)
    assert not runs_inline(dataclasses.replace(control, timeout_s=5.0), handler, inline_control=True)
    side_effect = planned("test_count")
    assert not runs_inline(side_effect, REGISTRY.handler("test_count"), inline_control=True)


def test_nodes_with_side_effects_are_journaled_before_the_run_moves_on():
    assert journals_durably(REGISTRY.handler("test_count"), inline=False)
    assert not journals_durably(REGISTRY.handler("test_count"), inline=True)
    assert not journals_durably(REGISTRY.handler("transform"), inline=False)  # control: computed again
    assert not journals_durably(REGISTRY.handler("delay"), inline=True)


# --- dead letters: the scheduler's one catch rule ---------------------------------------------------


def _ended_with_an_error_edge(condition_value: str):
    raw = canvas(
        [node("boom", "test_flaky"), node("fix")],
        [
            {
                "id": "e",
                "source": "boom",
                "target": "fix",
                "sourceHandle": "error",
                "data": {"condition": {"field": "{{ boom.error.type }}", "operator": "eq", "value": condition_value}},
            }
        ],
    )
    state = ScopeRun(compiled(raw, REGISTRY), TOP)
    state.start()
    failed = NodeResult("failed", error={"message": "x", "type": "NodeError", "node_id": "boom", "attempts": 1})
    return state.node_ended("boom", failed, lambda: {"boom": state.outputs["boom"]})


def test_a_failure_is_a_dead_letter_exactly_when_no_error_edge_fires():
    assert not is_dead_letter(_ended_with_an_error_edge("NodeError"))  # its error edge fires: caught
    assert is_dead_letter(_ended_with_an_error_edge("Timeout"))  # an error edge, but it does not fire


# --- outputs --------------------------------------------------------------------------------------------


def test_an_output_over_the_limit_is_an_error_and_no_limit_refuses_nothing():
    assert oversize_error("x" * 100, None, "n", 1) is None
    assert oversize_error("x" * 100, 1000, "n", 1) is None
    error = oversize_error("x" * 100, 50, "n", 2)
    assert error is not None and error["type"] == "OutputTooLarge" and error["attempts"] == 2
    assert error["node_id"] == "n" and "FLOWMAESTRO_MAX_NODE_OUTPUT_BYTES (50)" in error["message"]


def test_the_run_result_keeps_top_level_outputs_only_by_reference_when_stored():
    reference = {"truncated": True, "ref": "0" * 32, "bytes": 9}
    assert kept_output(TOP, True, {"a": 1}, {"a": 1}) == {"a": 1}
    assert kept_output(TOP, True, "x" * 9, reference) == reference
    assert kept_output(TOP, False, None, None) is None
    assert kept_output("loop-1", True, {"a": 1}, {"a": 1}) is None  # a body's output lives in its frame
