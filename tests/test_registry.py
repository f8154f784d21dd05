"""The handler registry is a value (node_handlers/registry.py): each entry point builds one
from its settings; nothing is kept for the process."""

from __future__ import annotations

from builder.compiler import compile_canvas
from node_handlers.registry import build_registry
from node_handlers.settings import HandlerSettings
from tests.support import SleepHandler, canvas, node


def loop_of(count: int) -> dict:
    return canvas(
        [
            node("lp", "loop", data={"mode": "for", "count": count, "max_iterations": 1_000_000}),
            node("step", "transform", parentId="lp", data={"output": "{{ loop.index }}"}),
        ]
    )


def test_two_registries_in_one_process_apply_their_own_loop_cap():
    strict = build_registry(HandlerSettings(max_loop_iterations=5))
    lenient = build_registry(HandlerSettings(max_loop_iterations=100))
    [issue] = [i for i in compile_canvas(loop_of(6), strict).errors if i.node_id == "lp"]
    assert "FLOWMAESTRO_MAX_LOOP_ITERATIONS=5" in issue.message
    assert compile_canvas(loop_of(6), lenient).ok


def test_a_handler_registered_in_one_registry_is_not_in_another():
    first = build_registry()
    first.register(type("Extra", (SleepHandler,), {"type": "extra_only_here"})())
    assert "extra_only_here" in first.types()
    assert "extra_only_here" not in build_registry().types()


def test_plugins_of_the_entry_point_group_are_loaded(test_handler_plugin):
    assert {"test_sleep", "test_flaky", "test_count"} <= set(build_registry().types())
