"""The capabilities the engine hands every handler (``node_handlers.base.NodeCapabilities``),
bound to one node execution.

Approvals and sub-workflows are ordinary handlers: they ask for what only the run can do
(pause it for a person, start a child run) through these, and the agent node asks for the
same ones (tool approvals) plus journaled sub-steps (its turns and tool calls).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from builder.plan import PlanNode
from flows.frames import Frame
from flows.journal import JournalUnavailable
from flows.records import NodeRun
from node_handlers.base import NO_CAPABILITIES, Completed

if TYPE_CHECKING:
    from flows.engine import Execution


@dataclass(frozen=True)
class ChildRun:
    """What a node asks to run as a child (``NodeCapabilities.start_child_run``), as the
    run's sub-workflows (``flows.subworkflows``) take it."""

    workflow: str
    """A saved workflow id, or a canvas file path for the CLI."""
    version: int | None
    inputs: dict[str, Any]


@dataclass(frozen=True)
class RunCapabilities:
    """``NodeCapabilities`` of one node execution ``(node, frame.path)`` of ``execution``.
    ``key``: the node execution's cache key, which a journaled sub-step is read back under
    (a changed configuration computes its sub-steps again)."""

    execution: Execution
    node: PlanNode
    frame: Frame
    run: NodeRun
    key: str

    async def pause_for_person(self, request: Any) -> Completed:
        # A budget's question may come from inside a task run (an llm node), which the run's
        # release signal must never reach: such a node stays "running", and the run is held.
        releasable = getattr(request, "kind", None) != "budget"
        if releasable:
            self.run.status = "paused"  # not "running": the run may be released meanwhile
        # What ended before the wait is listed (GET .../nodes) while the person decides.
        try:
            await self.execution.journal.flush()
        except JournalUnavailable:  # still buffered: the next write takes it
            pass
        decided: Completed = await self.execution.approvals.wait(self.execution, self.node, self.frame, request)
        self.run.status = "running"  # an agent goes on after its tool approval
        return decided

    async def start_child_run(
        self, workflow: str, version: int | None, inputs: Mapping[str, Any], *, step: str | None = None
    ) -> Completed:
        subworkflows = self.execution.subworkflows
        if subworkflows is None:
            return await NO_CAPABILITIES.start_child_run(workflow, version, inputs)
        completed: Completed = await subworkflows.run(
            self.execution,
            self.node,
            ChildRun(workflow, version, dict(inputs)),
            journal=self.execution.child_journal_id(self.node, self.frame, step),
        )
        return completed

    async def workflow_inputs(self, workflow: str, version: int | None) -> Mapping[str, Any]:
        subworkflows = self.execution.subworkflows
        if subworkflows is None:
            return await NO_CAPABILITIES.workflow_inputs(workflow, version)
        canvas = await subworkflows.resolver(workflow, version, self.execution.record.id, subworkflows.owner)
        inputs = canvas.get("inputs") if isinstance(canvas, dict) else None
        return inputs if isinstance(inputs, dict) else {}

    async def journal_step(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        return await self.execution.journal.step(self.node.id, self.frame.path, self.key, name, compute)
