"""Where node outputs live during a run.

A ``Frame`` is one execution of a scope: the top level, or one iteration or branch of a
container. Frames chain to their parent, so a body node reads outputs of nodes upstream
of its container, while every iteration has its own outputs (nothing leaks between
iterations or branches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.plan import Plan, ScopeId


@dataclass
class Frame:
    scope_id: ScopeId
    path: tuple[int, ...]
    parent: Frame | None = None
    loop: dict[str, Any] | None = None
    """``loop.*`` of the innermost enclosing loop iteration."""
    parallel: dict[str, Any] | None = None
    """``parallel.*`` of the innermost enclosing parallel branch."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Outputs of this scope's nodes that ended, as downstream reads them; written by the
    scope's ``flows.scheduler.ScopeRun``."""
    labels: tuple[str, ...] = ()
    """How each index of ``path`` reads to a person: ``2/10`` or ``branch 3``."""
    task_runs: dict[str, str] = field(default_factory=dict)
    """Task run ids of this scope's nodes (where the runner shows them), for the edges of
    the Prefect run graph: a container's from its start, a node's once it has one."""

    @property
    def container_task_run(self) -> str | None:
        """The task run of the container execution this frame is a body of."""
        return self.parent.task_runs.get(self.scope_id) if self.parent is not None else None

    def child(
        self,
        scope_id: ScopeId,
        index: int,
        label: str,
        *,
        loop: dict[str, Any] | None = None,
        parallel: dict[str, Any] | None = None,
    ) -> Frame:
        return Frame(
            scope_id,
            self.path + (index,),
            self,
            loop or self.loop,
            parallel or self.parallel,
            labels=self.labels + (label,),
        )

    def lookup(self, plan: Plan, node_id: str) -> Any:
        """Output of ``node_id`` as seen from this frame; ``None`` if it was skipped."""
        target_scope = plan.nodes[node_id].scope
        frame: Frame | None = self
        while frame is not None and frame.scope_id != target_scope:
            frame = frame.parent
        return None if frame is None else frame.outputs.get(node_id)
