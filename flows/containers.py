"""Loop and parallel containers.

Every iteration or branch runs the container's body through ``Execution.run_scope`` in a
fresh ``Frame`` (its own outputs, scheduler and path), so conditions, joins and error
edges inside a body behave exactly as at the top level. Only the body results are kept
once an iteration ends; intermediate outputs are dropped with the frame.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from builder.plan import PlanNode
from builder.templates import TemplateRenderError, evaluate_expression
from flows.frames import Frame
from node_handlers.base import NodeError
from node_handlers.branching import is_truthy

if TYPE_CHECKING:
    from flows.engine import Execution, NodeOutcome, ScopeResult


async def run_container(ex: Execution, node: PlanNode, frame: Frame) -> NodeOutcome:
    from flows.engine import NodeOutcome, error_info

    handler = ex.registry.handler(node.type)
    try:
        config = ex.resolve_config(node, handler, frame, skip_keys=handler.own_scope_keys)
        if node.container == "loop":
            output = await _run_loop(ex, node, frame, config)
        else:
            output = await _run_parallel(ex, node, frame, config)
    except NodeError as exc:
        return NodeOutcome("failed", error=error_info(exc, node.id, 1))
    return NodeOutcome("completed", output, frozenset({"source"}))


def _items(config: Any, node: PlanNode) -> list[Any]:
    items = config.items
    if not isinstance(items, list):
        raise NodeError(f"data.items must resolve to an array, got {type(items).__name__}", error_type="ConfigError")
    return items


def _count(config: Any) -> int:
    count = config.count
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise NodeError(f"data.count must resolve to a non-negative integer, got {count!r}", error_type="ConfigError")
    return count


def body_result(ex: Execution, node: PlanNode, child: Frame) -> Any:
    """The output of the body's single terminal node, or ``{node_id: output}`` of the
    completed terminals when there are several."""
    terminals = ex.plan.scopes[node.id].terminals
    if len(terminals) == 1:
        return child.outputs.get(terminals[0]) if terminals[0] in child.completed else None
    return {t: child.outputs[t] for t in terminals if t in child.completed}


def body_error(result: ScopeResult, where: str) -> NodeError:
    first = result.failures[0]
    message = f"{where}: node {first.node_id!r} failed: {first.error['message'] if first.error else 'unknown error'}"
    return NodeError(message, error_type="BodyFailed",
                     details={"failed_nodes": [{"node_id": f.node_id, "path": list(f.path)} for f in result.failures]})


async def _run_loop(ex: Execution, node: PlanNode, frame: Frame, config: Any) -> dict[str, Any]:
    mode, limit = config.mode, config.max_iterations
    items: list[Any] | None = _items(config, node) if mode == "forEach" else None
    total: int | None = len(items) if items is not None else (_count(config) if mode == "for" else None)
    if total is not None and total > limit:
        raise NodeError(f"the loop would run {total} iterations, more than max_iterations={limit}",
                        error_type="MaxIterationsExceeded")
    results: list[Any] = []
    index = 0
    while True:
        if total is not None and index >= total:
            break
        state = {"index": index, "iteration": index + 1, "item": items[index] if items is not None else None,
                 "total": total, "results": results}
        if mode == "while" and not _condition(ex, node, frame, config, state):
            break
        if total is None and index >= limit:
            raise NodeError(f"the loop reached max_iterations={limit} and its condition still holds",
                            error_type="MaxIterationsExceeded")
        label = f"{index + 1}/{total}" if total is not None else str(index + 1)
        child = frame.child(node.id, index, label, loop=state)
        result = await ex.run_scope(node.id, child)
        if result.failed:
            raise body_error(result, f"iteration {index}")
        results.append(body_result(ex, node, child))
        if mode == "doWhile":
            after = dict(state, results=results)
            if not _condition(ex, node, frame, config, after):
                index += 1
                break
        index += 1
    return {"results": results, "iterations": index}


def _condition(ex: Execution, node: PlanNode, frame: Frame, config: Any, state: dict[str, Any]) -> bool:
    scope = ex.template_scope(node, frame) | {"loop": state}
    try:
        return is_truthy(evaluate_expression(node.data["condition"], scope, field="data.condition"))
    except TemplateRenderError as exc:
        raise NodeError(exc.message, error_type="TemplateError") from exc


async def _run_parallel(ex: Execution, node: PlanNode, frame: Frame, config: Any) -> dict[str, Any]:
    items = _items(config, node) if config.mode == "collection" else None
    total = len(items) if items is not None else _count(config)
    gate = asyncio.Semaphore(config.max_concurrency or max(total, 1))
    collect = config.on_error == "collect"

    async def branch(index: int) -> tuple[int, Frame, ScopeResult]:
        async with gate:
            item = items[index] if items is not None else None
            state = {"index": index, "item": item, "currentItem": item, "total": total}
            child = frame.child(node.id, index, f"branch {index}", parallel=state)
            return index, child, await ex.run_scope(node.id, child)

    results: list[Any] = [None] * total
    errors: list[dict[str, Any]] = []
    tasks = [asyncio.create_task(branch(i)) for i in range(total)]
    try:
        for next_done in asyncio.as_completed(tasks):
            index, child, result = await next_done
            if result.failed:
                error = body_error(result, f"branch {index}")
                if not collect:
                    raise error
                errors.append({"index": index, "error": {"message": error.message, "type": error.error_type,
                                                          **error.details}})
                continue
            results[index] = body_result(ex, node, child)
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    errors.sort(key=lambda e: e["index"])
    return {"results": results, "errors": errors}
