"""What the run records of each node execution for ``GET /api/executions/{id}/nodes``.

The engine tells ``NodeExecutionRecorder`` a node's resolved configuration (its input)
when it has resolved it, the bus gives it the node's ``log:lines`` events (what a code node
prints), and the engine hands it the node execution once it has ended. The record (input
and error with secrets redacted as the journal redacts them, the output as events show it:
whole, or its large-output reference) goes to the run's journal, which writes it with its
next write (``flows.journal``). A run without a store records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from builder.plan import PlanNode
from flows.events import RunEvent, utcnow
from flows.frames import Frame
from flows.journal import RunJournal
from flows.node_logs import node_log_line
from flows.recording import task_run_name
from flows.records import NodeRun
from flows.scheduler import NodeResult
from store.node_executions import NodeExecution
from store.vocabulary import EventType, NodeStatus

Key = tuple[str, tuple[int, ...]]
MAX_LOG_LINES = 1000
"""Log lines kept per node execution (its first ones); the node's own summary line is last."""


class NodeExecutionRecorder:
    def __init__(self, journal: RunJournal):
        self.journal = journal
        self.enabled = journal.records_executions
        self._inputs: dict[Key, dict[str, Any]] = {}
        self._logs: dict[Key, list[dict[str, Any]]] = {}

    def resolved(self, node_id: str, path: tuple[int, ...], config: Any) -> None:
        """The node execution's resolved configuration: its input."""
        if self.enabled:
            self._inputs[(node_id, path)] = self.journal.redact(config.model_dump(mode="json"))

    def on_event(self, event: RunEvent) -> None:
        """A bus subscriber: keeps the lines a node logs (``log:lines``)."""
        if not self.enabled or event.type != EventType.LOG_LINES or event.node_id is None:
            return
        logs = self._logs.setdefault((event.node_id, tuple(event.path or ())), [])
        for line in event.data.get("lines") or ():
            if len(logs) >= MAX_LOG_LINES:
                break
            logs.append({"at": event.timestamp, "level": "info", "message": self.journal.redact(str(line))})

    def ended(self, node: PlanNode, frame: Frame, run: NodeRun, result: NodeResult, shown: Any) -> None:
        """The node execution has ended: its record goes to the journal."""
        if not self.enabled:
            return
        key = (node.id, frame.path)
        logs = self._logs.pop(key, [])
        ended_at = run.ended_at or utcnow()
        line = node_log_line(node, task_run_name(node, frame), run, result, redact=self.journal.redact)
        level = "error" if result.status == NodeStatus.FAILED else "info"
        logs.append({"at": ended_at.isoformat(), "level": level, "message": line})
        error = result.error
        self.journal.node_execution(
            NodeExecution(
                node_id=node.id,
                path=frame.path,
                type=node.type,
                status=str(result.status),
                attempts=max(run.attempts, 1),
                input=self._inputs.pop(key, None),
                output=shown if result.succeeded else None,
                error=self.journal.redact(dict(error)) if isinstance(error, Mapping) else None,
                started_at=run.started_at or ended_at,
                ended_at=ended_at,
                duration_ms=run.duration_ms,
                restored=result.restored,
                logs=tuple(logs),
            )
        )
