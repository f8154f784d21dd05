"""Subworkflow nodes: run another workflow as a child Prefect flow run.

Where the child canvas comes from depends on who runs the parent: the CLI reads canvas
files (``data.workflow`` is a path, relative to the working directory), the API reads its
saved workflows (``data.workflow`` is a workflow id of the same owner). The process sets
the resolver once with ``set_workflow_resolver``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from node_handlers.base import Completed, NodeError

# (reference, version, parent run id) -> canvas
WorkflowResolver = Callable[[str, int | None, str], Awaitable[dict[str, Any]]]


async def canvas_file_resolver(reference: str, version: int | None, parent_run_id: str) -> dict[str, Any]:
    path = Path(reference)
    if not path.is_file():
        raise NodeError(f"subworkflow {reference!r}: no such canvas file", error_type="SubworkflowNotFound")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise NodeError(f"subworkflow {reference!r} is not valid JSON: {exc}", error_type="SubworkflowInvalid") from exc


_resolver: WorkflowResolver = canvas_file_resolver


def set_workflow_resolver(resolver: WorkflowResolver) -> None:
    global _resolver
    _resolver = resolver


class PrefectSubworkflows:
    """Runs a child canvas through the generic flow: Prefect records it as a subflow run
    of the parent, with its own events and result."""

    async def run(self, execution: Any, node: Any, config: Any) -> Completed:
        from flows.flow import run_workflow

        canvas = await _resolver(config.workflow, config.version, execution.record.id)
        state = await run_workflow(canvas=canvas, inputs=dict(config.inputs), workflow_id=config.workflow,
                                   version=config.version, return_state=True)
        result = await state.result(raise_on_failure=False)
        child_id = str(state.state_details.flow_run_id)
        if not isinstance(result, dict) or result.get("status") != "completed":
            message = (result or {}).get("error", {}).get("message") if isinstance(result, dict) else str(result)
            raise NodeError(f"child run {child_id} did not complete: {message}", error_type="SubworkflowFailed",
                            details={"child_run_id": child_id})
        return Completed(output=result.get("output"), usage=result.get("usage") or None)
