"""What a run shows where its runner shows runs: in Prefect, a task run per node execution
(with the task runs it depends on and the container it ran in) and a log line each.

Nodes that run as task runs show themselves; ``TaskRunMirror`` records the ones that run
without the runner (inline nodes, containers, a node that failed before running) and counts
the task runs made, so that a run past ``max_task_runs`` shows what its container bodies ran
inline as one summary task run per body node and container execution instead.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from builder.plan import TOP, Plan, PlanNode
from flows.calls import MirroredRun, NodeRunner
from flows.events import utcnow
from flows.frames import Frame
from flows.node_logs import node_log_line
from flows.records import NodeRun
from flows.scheduler import NodeResult
from node_handlers.base import NodeError


def task_run_name(node: PlanNode, frame: Frame) -> str:
    """``summarize [2/10]`` inside a loop, ``fetch [branch 3]`` inside a parallel."""
    return f"{node.label} [{' / '.join(frame.labels)}]" if frame.labels else node.label


def upstream_task_runs(frame: Frame, upstream: Mapping[str, Any]) -> tuple[str, ...]:
    """Task runs of the nodes whose edges fired into a node (``upstream``'s keys)."""
    return tuple(frame.task_runs[source] for source in upstream if source in frame.task_runs)


class TaskRunMirror:
    def __init__(
        self, plan: Plan, runner: NodeRunner, *, max_task_runs: int, redact: Callable[[Any], Any] = lambda value: value
    ) -> None:
        """``max_task_runs``: how many task runs the run shows one by one (Prefect's run graph
        draws at most 10,000 nodes, and its in-memory broker drops messages it cannot queue).
        ``redact``: applied to error messages in log lines."""
        self.plan = plan
        self.runner = runner
        self.max_task_runs = max_task_runs
        self.redact = redact
        self.task_runs = 0
        """Task runs made so far, recorded or by the runner."""
        self._unrecorded: dict[tuple[str, tuple[int, ...]], dict[str, _Tally]] = {}
        """Per container execution ``(node_id, path)``: body node executions not shown one by one."""

    def ran_as_task(self) -> None:
        """A node execution ran as a task run of the runner."""
        self.task_runs += 1

    def started(self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any]) -> None:
        """A node that goes on for a while (a container, a delay) has started: it shows as
        running meanwhile, and a container's bodies show inside it."""
        self._record(node, frame, run, upstream, ended=None)
        if run.task_run_id is not None:
            frame.task_runs[node.id] = run.task_run_id

    def ended(
        self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any], error: BaseException | None
    ) -> None:
        """A node that ran without the runner has ended (with ``error`` if it failed)."""
        if node.container:
            self._record_summaries(node, frame, run)
        self._record(node, frame, run, upstream, ended=utcnow(), error=error)

    def outcome(self, node: PlanNode, frame: Frame, run: NodeRun, outcome: NodeResult) -> None:
        """Any node execution has ended: downstream nodes find its task run, and it writes
        its log line (unless it is only counted)."""
        if run.task_run_id is not None:
            frame.task_runs[node.id] = run.task_run_id
        if self.runner.recording and not (run.task_run_id is None and self._summarized(frame)):
            line = node_log_line(node, task_run_name(node, frame), run, outcome, redact=self.redact)
            self.runner.log(line, task_run_id=run.task_run_id, failed=outcome.status == "failed")

    def _summarized(self, frame: Frame) -> bool:
        """Whether the node executions of ``frame`` are shown in summary only (the run has
        made all the task runs it shows one by one); top-level nodes always are shown."""
        return frame.scope_id != TOP and self.task_runs >= self.max_task_runs

    def _record(
        self,
        node: PlanNode,
        frame: Frame,
        run: NodeRun,
        upstream: Mapping[str, Any],
        *,
        ended: Any,
        error: BaseException | None = None,
    ) -> None:
        if not self.runner.recording:
            return
        if run.task_run_id is None:  # its first record: it gets a task run, or is counted
            if self._summarized(frame):
                if ended is not None:
                    tallies = self._unrecorded.setdefault((frame.scope_id, frame.path[:-1]), {})
                    tallies.setdefault(node.id, _Tally()).add(run, error)
                return
            run.task_run_id = str(uuid.uuid4())
            self.task_runs += 1
        assert run.started_at is not None
        self.runner.record(
            MirroredRun(
                node=node,
                path=frame.path,
                name=task_run_name(node, frame),
                task_run_id=run.task_run_id,
                started=run.started_at,
                ended=ended,
                error=error,
                attempts=max(run.attempts, 1),
                upstream=upstream_task_runs(frame, upstream),
                parent=frame.container_task_run,
            )
        )

    def _record_summaries(self, container: PlanNode, frame: Frame, run: NodeRun) -> None:
        """One task run (and log line) per body node of a container execution for what its
        bodies ran that was not shown one by one."""
        tallies = self._unrecorded.pop((container.id, frame.path), {})
        if run.task_run_id is None and frame.scope_id != TOP:
            # The container execution is itself only counted: its bodies' nodes go to the
            # summaries of the container around it.
            outer = self._unrecorded.setdefault((frame.scope_id, frame.path[:-1]), {})
            for node_id, tally in tallies.items():
                outer.setdefault(node_id, _Tally()).merge(tally)
            return
        for node_id, tally in tallies.items():
            node = self.plan.nodes[node_id]
            name = f"{node.label} [{' / '.join(frame.labels + (f'{tally.count} more',))}]"
            summary = (
                f"{tally.count} executions not shown one by one: {tally.count - tally.failed} completed, "
                f"{tally.failed} failed"
            )
            task_run_id = str(uuid.uuid4())
            self.runner.record(
                MirroredRun(
                    node=node,
                    path=frame.path,
                    name=name,
                    task_run_id=task_run_id,
                    started=tally.started,
                    ended=tally.ended,
                    error=NodeError(summary) if tally.failed else None,
                    parent=run.task_run_id,
                )
            )
            self.runner.log(f"{name} ({node.type}): {summary}", task_run_id=task_run_id, failed=tally.failed > 0)


@dataclasses.dataclass
class _Tally:
    """Node executions counted instead of shown one by one."""

    count: int = 0
    failed: int = 0
    started: Any = None
    ended: Any = None

    def add(self, run: NodeRun, error: BaseException | None) -> None:
        self.count += 1
        self.failed += error is not None
        self.started = self.started or run.started_at
        self.ended = utcnow()

    def merge(self, other: _Tally) -> None:
        self.count += other.count
        self.failed += other.failed
        self.started = self.started or other.started
        self.ended = other.ended or self.ended
