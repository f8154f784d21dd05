"""Loop and parallel containers.

Every iteration or branch runs the container's body through ``ScopeRunner.run_scope`` in a
fresh ``Frame`` (its own outputs, scope run and path), so conditions, joins and error
edges inside a body behave exactly as at the top level, and the body result is decided by
the same rules (``flows.scheduler.scope_result``). Only the body results are kept once an
iteration ends; intermediate outputs are dropped with the frame.

Containers see the engine only through ``ScopeRunner``: the engine imports this module,
never the other way round.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from builder.plan import PlanNode
from builder.templates import TemplateRenderError, evaluate_expression
from flows.frames import Frame
from flows.scheduler import ScopeResult
from node_handlers.base import NodeError
from node_handlers.branching import is_truthy

DEFAULT_BRANCHES_IN_FLIGHT = 100
"""Branches of a parallel started at once when it does not say: every branch in flight takes
a step in each turn of the event loop, so thousands of them (of inline nodes that never
wait) would hold the loop for seconds at a time (2,000 branches: 0.8 s), and with it every
other run, heartbeat and stream of the process."""


YIELD_EVERY = 20
"""A loop gives the event loop a turn every this many iterations: the worker's other runs,
streams and cancellation watcher go on while one run loops over thousands of inline
nodes (each iteration awaits its body, but a body of nodes that never wait can keep the
loop's ready queue to itself)."""


class ScopeRunner(Protocol):
    """What a container needs of the engine."""

    async def run_scope(self, frame: Frame) -> ScopeResult:
        """Run the nodes of ``frame``'s scope (a body); what it returns."""
        ...

    def template_scope(self, node: PlanNode, frame: Frame) -> dict[str, Any]:
        """The scope ``node``'s own templates see in ``frame`` (the loop condition's)."""
        ...


async def run_container(runner: ScopeRunner, node: PlanNode, frame: Frame, config: Any) -> dict[str, Any]:
    """Run the bodies of a loop or parallel whose configuration is resolved; its output.
    Raises ``NodeError`` when the container fails."""
    if node.container == "loop":
        return await _run_loop(runner, node, frame, config)
    return await _run_parallel(runner, node, frame, config)


def _items(config: Any) -> list[Any]:
    items = config.items
    if not isinstance(items, list):
        raise NodeError(f"data.items must resolve to an array, got {type(items).__name__}", error_type="ConfigError")
    return items


def _count(config: Any) -> int:
    count = config.count
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise NodeError(f"data.count must resolve to a non-negative integer, got {count!r}", error_type="ConfigError")
    return count


def body_error(result: ScopeResult, where: str) -> NodeError:
    first = result.failures[0]
    message = f"{where}: node {first.node_id!r} failed: {first.error['message']}"
    return NodeError(
        message,
        error_type="BodyFailed",
        details={"failed_nodes": [{"node_id": f.node_id, "path": list(f.path)} for f in result.failures]},
    )


async def _run_loop(runner: ScopeRunner, node: PlanNode, frame: Frame, config: Any) -> dict[str, Any]:
    mode, limit = config.mode, config.iteration_cap
    items: list[Any] | None = _items(config) if mode == "forEach" else None
    total: int | None = len(items) if items is not None else (_count(config) if mode == "for" else None)
    if total is not None and total > limit:
        raise NodeError(
            f"the loop would run {total} iterations, more than {config.cap_name}", error_type="MaxIterationsExceeded"
        )
    results: list[Any] = []
    index = 0
    while True:
        if total is not None and index >= total:
            break
        state = {
            "index": index,
            "iteration": index + 1,
            "item": items[index] if items is not None else None,
            "total": total,
            "results": results,
        }
        if mode == "while" and not _condition(runner, node, frame, config, state):
            break
        if total is None and index >= limit:
            raise NodeError(
                f"the loop reached {config.cap_name} and its condition still holds", error_type="MaxIterationsExceeded"
            )
        if index and index % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        label = f"{index + 1}/{total}" if total is not None else str(index + 1)
        child = frame.child(node.id, index, label, loop=state)
        result = await runner.run_scope(child)
        if result.failed:
            raise body_error(result, f"iteration {index}")
        results.append(result.output)
        if mode == "doWhile":
            after = dict(state, results=results)
            if not _condition(runner, node, frame, config, after):
                index += 1
                break
        index += 1
    return {"results": results, "iterations": index}


def _condition(runner: ScopeRunner, node: PlanNode, frame: Frame, config: Any, state: dict[str, Any]) -> bool:
    scope = runner.template_scope(node, frame) | {"loop": state}
    try:
        return is_truthy(evaluate_expression(node.data["condition"], scope, field="data.condition"))
    except TemplateRenderError as exc:
        raise NodeError(exc.message, error_type="TemplateError") from exc


async def _run_parallel(runner: ScopeRunner, node: PlanNode, frame: Frame, config: Any) -> dict[str, Any]:
    items = _items(config) if config.mode == "collection" else None
    total = len(items) if items is not None else _count(config)
    gate = asyncio.Semaphore(config.max_concurrency or DEFAULT_BRANCHES_IN_FLIGHT)
    collect = config.on_error == "collect"

    async def branch(index: int) -> tuple[int, ScopeResult]:
        async with gate:
            item = items[index] if items is not None else None
            state = {"index": index, "item": item, "currentItem": item, "total": total}
            child = frame.child(node.id, index, f"branch {index}", parallel=state)
            return index, await runner.run_scope(child)

    results: list[Any] = [None] * total
    errors: list[dict[str, Any]] = []
    tasks = [asyncio.create_task(branch(i)) for i in range(total)]
    try:
        for next_done in asyncio.as_completed(tasks):
            index, result = await next_done
            if result.failed:
                error = body_error(result, f"branch {index}")
                if not collect:
                    raise error
                errors.append(
                    {"index": index, "error": {"message": error.message, "type": error.error_type, **error.details}}
                )
                continue
            results[index] = result.output
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    errors.sort(key=lambda e: e["index"])
    return {"results": results, "errors": errors}
