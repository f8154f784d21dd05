"""What the engine records of a run: node executions, the trace and the run result
(canvas spec, section 9). Built by the engine as it goes, not read back from Prefect's
API, which lags behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flows.events import utcnow


@dataclass
class NodeRun:
    """One execution of a node: ``(node_id, path)``."""

    node_id: str
    path: tuple[int, ...]
    status: str = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    cached: bool = False
    restored: bool = False
    """Completed in an earlier execution of the run and restored from its journal."""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    task_run_id: str | None = None

    def start(self) -> None:
        self.status = "running"
        self.started_at = utcnow()

    def end(self, status: str) -> None:
        self.status = status
        self.ended_at = utcnow()
        if self.started_at is None:
            self.started_at = self.ended_at

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return int((self.ended_at - self.started_at).total_seconds() * 1000)

    def summary(self, with_output: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "cached": self.cached,
            "restored": self.restored,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "duration_ms": self.duration_ms,
        }
        if with_output:
            out = {"status": self.status, "output": self.output, **{k: v for k, v in out.items() if k != "status"}}
        return out

    def trace_entry(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "path": list(self.path),
            "status": self.status,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "attempts": self.attempts,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class RunRecord:
    """The run result being built."""

    id: str
    workflow: str
    workflow_id: str | None = None
    version: int | None = None
    status: str = "pending"
    output: Any = None
    error: dict[str, Any] | None = None
    nodes: dict[str, NodeRun] = field(default_factory=dict)
    """Top-level nodes."""
    trace: list[NodeRun] = field(default_factory=list)
    """Every execution, body nodes included, in start order."""
    usage: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    plan_hash: str | None = None

    @classmethod
    def refused(
        cls,
        run_id: str,
        workflow: str,
        what: str,
        issues: list[dict[str, Any]],
        *,
        workflow_id: str | None = None,
        version: int | None = None,
    ) -> RunRecord:
        """A run refused before anything ran (``what``: invalid canvas, invalid inputs...),
        failed with each issue in its error."""
        now = utcnow()
        message = f"{what}: " + "; ".join(issue["message"] for issue in issues)
        return cls(
            id=run_id,
            workflow=workflow,
            workflow_id=workflow_id,
            version=version,
            status="failed",
            error={"message": message, "type": what.replace(" ", "_"), "issues": issues},
            started_at=now,
            ended_at=now,
        )

    @classmethod
    def cancelled_before_start(
        cls, run_id: str, workflow: str, *, workflow_id: str | None = None, version: int | None = None
    ) -> RunRecord:
        """A run cancelled before anything ran (through the API, before its flow run existed)."""
        now = utcnow()
        return cls(
            id=run_id,
            workflow=workflow,
            workflow_id=workflow_id,
            version=version,
            status="cancelled",
            error={"message": "cancelled before it started"},
            started_at=now,
            ended_at=now,
        )

    def result(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "workflow_id": self.workflow_id,
            "version": self.version,
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "nodes": {node_id: run.summary() for node_id, run in self.nodes.items()},
            "trace": [run.trace_entry() for run in self.trace],
            "usage": self.usage or None,
            "plan_hash": self.plan_hash,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
        }
