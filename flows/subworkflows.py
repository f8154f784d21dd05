"""Subworkflow nodes: run another workflow as a child Prefect flow run.

The subworkflow handler asks for a child run (``NodeCapabilities.start_child_run``); the
engine hands the request to the run's ``PrefectSubworkflows``. Where the child canvas comes
from depends on what the parent runs, so the resolver is part of the run's context
(``flows.run_context.RunContext``): a canvas file run with ``flowmaestro run`` reads canvas
files (``data.workflow`` is a path, relative to the working directory); a worker running a
saved workflow reads the owner's saved workflows (``data.workflow`` is a workflow id,
``deployments.run_store``). The API never runs one: it only starts flow runs.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from flows.capabilities import ChildRun
from flows.prefect_compat import UntrustedResult, run_result
from node_handlers.base import Completed, NodeError

WORKFLOW_TAG = "workflow:{id}"
"""The Prefect tag of every flow run of a saved workflow: its deployment's runs carry it
(``deployments.workflow_deployments``), and so does a child run a parent starts."""


def workflow_tag(workflow_id: str) -> str:
    return WORKFLOW_TAG.format(id=workflow_id)


async def tag_run_with_workflow(flow_context: Any, workflow_id: str) -> None:
    """Give the flow run executing now its saved workflow's tag, when it lacks it: a child run
    (a subworkflow node) is created by Prefect with the tags of the context it was called in,
    never its deployment's. Set on the flow run only, once it exists: a ``tags()`` context
    around the child's call would tag every task run of the child as well, and Prefect takes a
    tag concurrency slot (a server call) for each task run that starts with tags."""
    flow_run = getattr(flow_context, "flow_run", None)
    tag = workflow_tag(workflow_id)
    if flow_run is None or tag in (flow_run.tags or ()):
        return
    tags = sorted(set(flow_run.tags or ()) | {tag})
    await flow_context.client.update_flow_run(flow_run.id, tags=tags)
    flow_run.tags = tags


# (reference, version, parent run id, owner of the run) -> canvas
WorkflowResolver = Callable[[str, int | None, str, str | None], Awaitable[dict[str, Any]]]


async def canvas_file_resolver(
    reference: str, version: int | None, parent_run_id: str, owner: str | None
) -> dict[str, Any]:
    path = Path(reference)
    if not path.is_file():
        raise NodeError(f"subworkflow {reference!r}: no such canvas file", error_type="SubworkflowNotFound")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise NodeError(f"subworkflow {reference!r} is not valid JSON: {exc}", error_type="SubworkflowInvalid") from exc


class ChildFlow(Protocol):
    """The generic flow as a subworkflow node calls it (``flows.flow.workflow_flow``): called
    inside a flow run, Prefect records the call as a subflow run and returns its final state."""

    def __call__(
        self,
        *,
        canvas: dict[str, Any] | None,
        inputs: dict[str, Any],
        workflow_id: str | None,
        version: int | None,
        owner: str | None,
        depth: int,
        journal: str | None,
        return_state: bool,
        started_at: str | None = None,
    ) -> Awaitable[Any]: ...


class PrefectSubworkflows:
    """Runs a child canvas through the generic flow: Prefect records it as a subflow run
    of the parent, with its own events and result. The child belongs to the parent's owner."""

    def __init__(
        self,
        resolver: WorkflowResolver,
        child_flow: ChildFlow,
        owner: str | None,
        *,
        by_reference: bool = False,
        depth: int = 0,
        max_depth: int = 10,
    ):
        """``by_reference``: the child is a saved workflow the child run loads itself (on a
        worker), so its parameters name it instead of carrying its canvas. ``depth``: how
        deep the parent run is nested (0 at the top); children deeper than ``max_depth``
        are refused, so workflows that run one another cannot nest without end."""
        self.resolver = resolver
        self.child_flow = child_flow
        self.owner = owner
        self.by_reference = by_reference
        self.depth = depth
        self.max_depth = max_depth

    async def run(self, execution: Any, node: Any, config: ChildRun, journal: str | None = None) -> Completed:
        """Run ``config`` as a child of ``execution``'s run; its output. ``journal``: the child
        run's journal id (``Execution.child_journal_id``)."""
        if self.depth + 1 > self.max_depth:
            raise NodeError(
                f"subworkflow {config.workflow!r}: sub-workflows nest at most {self.max_depth} deep "
                "(FLOWMAESTRO_MAX_SUBWORKFLOW_DEPTH)",
                error_type="SubworkflowTooDeep",
            )
        canvas = (
            None
            if self.by_reference
            else await self.resolver(config.workflow, config.version, execution.record.id, self.owner)
        )
        state = await self.child_flow(
            canvas=canvas,
            inputs=dict(config.inputs),
            workflow_id=config.workflow,
            version=config.version,
            owner=self.owner,
            depth=self.depth + 1,
            journal=journal,
            return_state=True,
        )
        child_id = str(state.state_details.flow_run_id)
        try:
            # The child ran in this process: its result is the engine's, in memory. Never
            # Prefect's ``State.result()``, which would unpickle whatever a forged state names.
            result = await run_result(state)
        except UntrustedResult as exc:
            raise NodeError(
                f"child run {child_id}: its result was refused ({exc})",
                error_type="SubworkflowFailed",
                details={"child_run_id": child_id},
            ) from exc
        if not isinstance(result, dict) or result.get("status") != "completed":
            message = (result or {}).get("error", {}).get("message") if isinstance(result, dict) else str(result)
            raise NodeError(
                f"child run {child_id} did not complete: {message}",
                error_type="SubworkflowFailed",
                details={"child_run_id": child_id},
            )
        return Completed(output=result.get("output"), usage=result.get("usage") or None)
