"""The engine: runs a compiled plan.

``Execution`` is the stateful loop around the pure rules of ``flows.scheduler``: it starts
the nodes a ``ScopeRun`` says are ready (up to ``settings.max_concurrency``), resolves their
templates, hands the call to a ``NodeRunner`` (a Prefect task run, or in-process), tells
the ``ScopeRun`` how each node ended, and records and publishes what it decided. Which
edges fire, how errors route, when a scope stops and what it returns are decided there,
not here; what to do with one node execution (restore it, run it inline, journal it
durably, keep it as a dead letter, keep its output) is decided by ``flows.policies``.
Containers run their bodies through the same loop (``flows.containers``), each iteration
or branch in its own ``Frame``. Handlers that need the run itself (approvals,
sub-workflows) get it through their ``NodeContext.capabilities`` (``flows.capabilities``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from builder.plan import TOP, Plan, PlanNode
from builder.templates import EnvNamespace, TemplateLimits, TemplateRenderError, render_value
from flows.approvals import WAKE_EARLY_S
from flows.calls import DirectRunner, NodeCall, NodeRunner
from flows.capabilities import RunCapabilities
from flows.containers import run_container
from flows.events import EventBus, utcnow
from flows.frames import Frame
from flows.journal import JournalUnavailable, RunJournal
from flows.large_outputs import LargeOutputs
from flows.node_executions import NodeExecutionRecorder
from flows.node_limits import NodeLimiter, ResolvedLimit, resolved_limit
from flows.observing import NO_OBSERVER, NodeObserver
from flows.policies import (
    is_dead_letter,
    journals_durably,
    kept_output,
    node_cache_key,
    oversize_error,
    restores,
    runs_inline,
    seeded,
)
from flows.recording import TaskRunMirror, task_run_name, upstream_task_runs
from flows.records import NodeRun, RunRecord
from flows.scheduler import Decision, NodeResult, ScopeResult, ScopeRun, error_info
from node_handlers.base import NO_CAPABILITIES, SOURCE, Completed, NodeContext, NodeError, NodeHandler
from node_handlers.containers import RESOLVED
from node_handlers.registry import HandlerRegistry
from node_handlers.services import HandlerServices
from store.vocabulary import EventType, NodeStatus, RunStatus

log = logging.getLogger("flowmaestro.engine")

FINAL_EVENT_OF_RUN_STATUS: Mapping[str, EventType] = {
    RunStatus.COMPLETED: EventType.EXECUTION_COMPLETED,
    RunStatus.FAILED: EventType.EXECUTION_FAILED,
    RunStatus.CANCELLED: EventType.EXECUTION_CANCELLED,
}
"""The last event of a run that ended with each status."""
FINAL_EVENT_OF_NODE_STATUS: Mapping[str, EventType] = {
    NodeStatus.COMPLETED: EventType.NODE_COMPLETED,
    NodeStatus.CACHED: EventType.NODE_CACHED,
    NodeStatus.FAILED: EventType.NODE_ERROR,
}
"""The event of a node that ended with each status (a skipped or cancelled one has its own)."""


class ApprovalGate(Protocol):
    async def wait(self, execution: Execution, node: PlanNode, frame: Frame, config: Any) -> Completed: ...


class StartGate(Protocol):
    """Called before nodes of a scope start; may hold them (a pause, ``flows.pauses``)."""

    async def before_start(self, execution: Execution, frame: Frame, node_ids: tuple[str, ...]) -> None: ...


RunRelease = Callable[[str, tuple[int, ...], datetime], Awaitable[None]]
"""Lets go of the run until a time (node id, path, time): raises the runner's release signal
(Prefect's ``Pause``), or returns when the run is not let go of (``flows.releases``)."""


class NoApprovals:
    async def wait(self, execution: Execution, node: PlanNode, frame: Frame, config: Any) -> Completed:
        return await NO_CAPABILITIES.pause_for_person(config)


@dataclasses.dataclass(frozen=True)
class NodeEnded:
    """A node execution has ended, as the outcome listeners (``Execution.outcome_listeners``)
    see it. ``shown``: its output as events show it (a reference to the store when large)."""

    node: PlanNode
    frame: Frame
    run: NodeRun
    result: NodeResult
    shown: Any


OutcomeListener = Callable[[NodeEnded], None]


@dataclasses.dataclass(frozen=True)
class FailedCall:
    """What the journal keeps of a leaf's failure, written once the scheduler has decided
    whether it was caught (``policies.is_dead_letter``)."""

    key: str
    config: Mapping[str, Any]
    attempts: int


class Execution:
    def __init__(
        self,
        plan: Plan,
        registry: HandlerRegistry,
        *,
        run_id: str,
        inputs: Mapping[str, Any],
        runner: NodeRunner | None = None,
        bus: EventBus | None = None,
        env: Mapping[str, str] | None = None,
        env_allowlist: frozenset[str] = frozenset(),
        workflow_id: str | None = None,
        version: int | None = None,
        owner: str | None = None,
        inline_control: bool = True,
        approvals: ApprovalGate | None = None,
        subworkflows: Any = None,
        journal: RunJournal | None = None,
        max_task_runs: int = 10_000,
        large_outputs: LargeOutputs | None = None,
        template_limits: TemplateLimits = TemplateLimits(),
        max_node_output_bytes: int | None = None,
        release: RunRelease | None = None,
        started_at: datetime | None = None,
        services: HandlerServices | None = None,
        observer: NodeObserver | None = None,
        limiter: NodeLimiter | None = None,
        limit_release_s: float | None = None,
    ):
        """``max_task_runs``: how many task runs the run shows one by one (``TaskRunMirror``).
        ``large_outputs``: how outputs over a size are shown in events and the run result
        (a reference to the store, ``flows.large_outputs``), so that a long run of large
        outputs floods neither the event log nor the records; none by default.
        ``template_limits``: the CPU and size budget of a node's templates.
        ``max_node_output_bytes``: a larger output (as JSON) fails its node before it is kept.
        ``release``: lets go of the run while a node waits long (``NodeContext.release_until``);
        without it, nodes wait in the process.
        ``started_at``: the run's first start, ``run.started_at`` in templates (the same in every
        execution of the run, so keys stay); this execution's start by default."""
        self.started_at = started_at
        self.observer: NodeObserver = observer or NO_OBSERVER
        """Around every node execution: its span and metrics (``flows.observing``)."""
        self.limiter = limiter
        """Holds nodes' ``concurrency`` and ``rate_limit`` slots (``flows.node_limits``);
        without it, those settings are not enforced."""
        self.limit_release_s = limit_release_s
        """A node waiting this long for a limit's slot lets go of the run (with ``release``)."""
        self.services = services
        """Handed to every node (``NodeContext.services``): the process's handler services."""
        self.release = release
        self.template_limits = template_limits
        self.max_node_output_bytes = max_node_output_bytes
        self.plan = plan
        self.registry = registry
        self.owner = owner
        """Whose run this is: handlers use only the secrets bound to this owner."""
        self.inputs = dict(inputs)
        self.runner: NodeRunner = runner or DirectRunner()
        self.inline = DirectRunner()
        self.bus = bus or EventBus(run_id)
        self.variables: dict[str, Any] = dict(plan.variables)
        self.env = EnvNamespace(env or {}, env_allowlist)
        self.inline_control = inline_control
        self.approvals: ApprovalGate = approvals or NoApprovals()
        self.subworkflows = subworkflows
        """Runs child workflows (``flows.subworkflows``); without it, subworkflow nodes fail."""
        self.journal = journal or RunJournal(run_id)
        """What an earlier execution of this run completed, and where this one records it."""
        self.on_error = plan.settings.get("on_error", "fail_fast")
        self.slots = asyncio.Semaphore(int(plan.settings.get("max_concurrency") or 8))
        self.record = RunRecord(
            id=run_id, workflow=plan.name, workflow_id=workflow_id, version=version, plan_hash=plan.hash
        )
        self.run_info = {"id": run_id, "workflow_id": workflow_id, "workflow": plan.name, "started_at": None}
        self.large_outputs = large_outputs or LargeOutputs(run_id, None)
        self.mirror = TaskRunMirror(plan, self.runner, max_task_runs=max_task_runs, redact=self.journal.redact)
        """What the run shows where the runner shows runs (Prefect's task runs and logs)."""
        self.outcome_listeners: list[OutcomeListener] = [self._publish_outcome, self._mirror_outcome]
        """Told, in order, of every node execution that ended (the event log, then the
        mirror in Prefect and its node log line). The journal is not one of them: its
        write must be awaited before the run moves on (``execute_leaf``, ``run_scope``)."""
        self._failed_calls: dict[tuple[str, tuple[int, ...]], FailedCall] = {}
        self.node_executions = NodeExecutionRecorder(self.journal)
        """What ``GET /api/executions/{id}/nodes`` lists, written with the journal."""
        self.outcome_listeners.append(
            lambda ended: self.node_executions.ended(ended.node, ended.frame, ended.run, ended.result, ended.shown)
        )
        self.bus.subscribe(self.node_executions.on_event)
        self.start_gate: StartGate | None = None
        """Holds nodes before they start while the run is to pause (``flows.pauses``)."""

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> RunRecord:
        record = self.record
        record.status, record.started_at = RunStatus.RUNNING, utcnow()
        self.run_info["started_at"] = (self.started_at or record.started_at).isoformat()
        self.bus.publish(EventType.EXECUTION_STARTED, workflow=self.plan.name)
        timeout = self.plan.settings.get("timeout_s")
        try:
            async with asyncio.timeout(timeout):
                result = await self.run_scope(Frame(TOP, ()))
        except asyncio.CancelledError:
            self._finish(RunStatus.CANCELLED, {"message": "the run was cancelled"})
            raise
        except TimeoutError:
            self._cancel_open_records()
            self._finish(
                RunStatus.FAILED, {"message": f"the run exceeded its time limit of {timeout:g} s", "type": "RunTimeout"}
            )
            return record
        if result.failed:
            first = result.failures[0]
            failed_nodes = [{"node_id": f.node_id, "path": list(f.path), "error": f.error} for f in result.failures]
            self._finish(
                RunStatus.FAILED,
                {
                    "message": f"node {first.node_id!r} failed: {first.error['message']}",
                    "node_id": first.node_id,
                    "type": first.error.get("type"),
                    "failed_nodes": failed_nodes,
                },
            )
        elif result.output_error is not None:
            self._finish(
                RunStatus.FAILED,
                {"message": f"the workflow output could not be built: {result.output_error}", "type": "TemplateError"},
            )
        else:
            record.output = result.output  # whole: it is what the run answers
            self._finish(RunStatus.COMPLETED, None, await self.large_outputs.shown(result.output))
        return record

    def _finish(self, status: RunStatus, error: dict[str, Any] | None, output: Any = None) -> None:
        """End the run; ``output``: the run's output as its final event shows it."""
        record = self.record
        record.status, record.error, record.ended_at = status, error, utcnow()
        for node_id in self.plan.scopes[TOP].nodes:
            record.nodes.setdefault(node_id, NodeRun(node_id, ()))
        self.bus.publish(FINAL_EVENT_OF_RUN_STATUS[status], status=status, error=error, output=output)

    def others_running(self, run: NodeRun) -> bool:
        """Whether a node other than ``run`` and the containers around it is executing,
        waiting (an approval) or launched and about to start (a parallel branch) now: then
        the run is not let go of, they would be cut short."""
        return any(
            other is not run
            and other.status in (NodeStatus.PENDING, NodeStatus.RUNNING, NodeStatus.PAUSED)
            and not self.plan.nodes[other.node_id].container
            for other in self.record.trace
        )

    def leaf_running(self) -> bool:
        """Whether a node other than a container or an approval is executing now."""
        return any(
            run.status == NodeStatus.RUNNING and not self.plan.nodes[run.node_id].container for run in self.record.trace
        )

    def _cancel_open_records(self) -> None:
        for run in self.record.trace:
            if run.status in (NodeStatus.RUNNING, NodeStatus.PAUSED, NodeStatus.PENDING):
                run.end(NodeStatus.CANCELLED)

    # --- one scope ----------------------------------------------------------------------------------

    async def run_scope(self, frame: Frame) -> ScopeResult:
        """Run the nodes of ``frame``'s scope as its ``ScopeRun`` decides; what it returns."""
        plan = self.plan
        state = ScopeRun(plan, frame.scope_id, on_error=self.on_error, path=frame.path, outputs=frame.outputs)
        running: dict[asyncio.Task[NodeResult], str] = {}
        runs: dict[str, NodeRun] = {}

        async def launch(node_ids: tuple[str, ...] | list[str]) -> None:
            if node_ids and self.start_gate is not None:
                await self.start_gate.before_start(self, frame, tuple(node_ids))
            for node_id in node_ids:
                run = self._new_run(node_id, frame)
                runs[node_id] = run
                task = asyncio.create_task(self.execute(plan.nodes[node_id], frame, run, state.upstream(node_id)))
                running[task] = node_id

        try:
            await launch(state.start())
            while running:
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: state.order[running[t]]):
                    node_id = running.pop(task)
                    node, run = plan.nodes[node_id], runs.pop(node_id)
                    edge_scope = functools.partial(self.template_scope, node, frame, include_self=True)
                    result = task.result()
                    decision = state.node_ended(node_id, result, edge_scope, attempts=run.attempts)
                    failed_call = self._failed_calls.pop((node_id, frame.path), None)
                    if failed_call is not None:
                        await self._journal_failure(node_id, frame, failed_call, result, decision)
                    if decision.broken_condition is not None:
                        run.status, run.error, run.output = NodeStatus.FAILED, decision.broken_condition, None
                        self.bus.publish(
                            EventType.NODE_ERROR, node_id=node_id, path=frame.path, error=decision.broken_condition
                        )
                    for skipped in decision.skipped:
                        self._new_run(skipped, frame, trace=False).end(NodeStatus.SKIPPED)
                        self.bus.publish(EventType.NODE_SKIPPED, node_id=skipped, path=frame.path)
                    self._never_started(decision.cancelled, frame)
                    await launch(decision.ready)
                if state.stopping and running:
                    await _cancel_all(running)  # each execute() records its node as cancelled
                    running.clear()
        except BaseException:  # cancelled, or released (Prefect's Pause): stop the rest of the scope
            await _cancel_all(running)
            raise
        self._never_started(state.never_started(), frame)
        return state.result(self._base_scope(frame) if frame.scope_id == TOP else None)

    async def _journal_failure(
        self, node_id: str, frame: Frame, failed_call: FailedCall, result: NodeResult, decision: Decision
    ) -> None:
        """Keep a leaf's failure in the journal, a dead letter when the scheduler found
        nothing to catch it. Buffered (written with the next durable write): a store that
        does not take a batch meanwhile keeps it buffered, and the node has failed anyway."""
        assert result.error is not None
        try:
            await self.journal.failed(
                node_id,
                frame.path,
                failed_call.key,
                result.error,
                failed_call.attempts,
                failed_call.config,
                dead_letter=is_dead_letter(decision),
            )
        except JournalUnavailable as exc:
            log.warning("node %s: its failure stays buffered in the journal: %s", node_id, exc)

    def _new_run(self, node_id: str, frame: Frame, trace: bool = True) -> NodeRun:
        run = NodeRun(node_id, frame.path)
        if frame.scope_id == TOP:
            self.record.nodes[node_id] = run
        if trace:
            self.record.trace.append(run)
        return run

    def _never_started(self, node_ids: list[str] | tuple[str, ...], frame: Frame) -> None:
        for node_id in node_ids:
            self._new_run(node_id, frame, trace=False).end(NodeStatus.CANCELLED)

    # --- one node -------------------------------------------------------------------------------------

    def _base_scope(self, frame: Frame) -> dict[str, Any]:
        scope: dict[str, Any] = {"inputs": self.inputs, "var": self.variables, "env": self.env, "run": self.run_info}
        if frame.loop is not None:
            scope["loop"] = frame.loop
        if frame.parallel is not None:
            scope["parallel"] = frame.parallel
        return scope

    def template_scope(self, node: PlanNode, frame: Frame, include_self: bool = False) -> dict[str, Any]:
        outputs = {ref: frame.lookup(self.plan, ref) for ref in node.references if ref != node.id}
        if include_self:
            outputs[node.id] = frame.outputs.get(node.id)
        scope = self._base_scope(frame)
        scope["nodes"] = outputs
        scope.update(outputs)
        return scope

    async def execute(self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any]) -> NodeResult:
        """Run one node and record how it ended. ``upstream``: outputs of the nodes whose
        edges fired into it. Observed throughout (its span current, its metrics: ``flows.observing``)."""
        with self.observer.node(node, frame, run) as seen:
            seen.result = await self._execute(node, frame, run, upstream)
            return seen.result

    async def _execute(self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any]) -> NodeResult:
        run.start()
        self.bus.publish(EventType.NODE_STARTED, node_id=node.id, path=frame.path, type=node.type, label=node.label)
        try:
            if node.container:
                outcome = await self.execute_container(node, frame, run, upstream)
            else:
                outcome = await self.execute_leaf(node, frame, run, upstream)
        except asyncio.CancelledError:
            run.end(NodeStatus.CANCELLED)
            raise
        except Exception as exc:  # a bug must fail the node, never hang the run
            log.exception("node %s crashed the engine", node.id)
            outcome = NodeResult(NodeStatus.FAILED, error=error_info(exc, node.id, max(run.attempts, 1)))
        shown = await self.large_outputs.shown(outcome.output) if outcome.succeeded else None
        run.output = kept_output(frame.scope_id, outcome.succeeded, outcome.output, shown)
        run.error = outcome.error
        run.cached = outcome.status == NodeStatus.CACHED
        run.restored = outcome.restored
        run.end(outcome.status)
        ended = NodeEnded(node, frame, run, outcome, shown)
        for listener in self.outcome_listeners:
            listener(ended)
        return outcome

    def _publish_outcome(self, ended: NodeEnded) -> None:
        """The node's final event in the event log."""
        outcome, run = ended.result, ended.run
        extra = {"restored": True} if outcome.restored else {}
        self.bus.publish(
            FINAL_EVENT_OF_NODE_STATUS[outcome.status],
            node_id=ended.node.id,
            path=ended.frame.path,
            status=outcome.status,
            output=ended.shown,
            error=outcome.error,
            attempts=run.attempts,
            handles=sorted(outcome.handles),
            **extra,
        )

    def _mirror_outcome(self, ended: NodeEnded) -> None:
        """Its task run found by downstream nodes in Prefect, and its log line."""
        self.mirror.outcome(ended.node, ended.frame, ended.run, ended.result)

    async def execute_container(
        self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any]
    ) -> NodeResult:
        """A loop or parallel: its configuration resolved here, its bodies run by
        ``flows.containers`` through ``run_scope``. Its ``source`` edges fire when it
        completes, its ``error`` edges when it fails."""
        handler = self.registry.handler(node.type)
        self.mirror.started(node, frame, run, upstream)
        restored = self._seeded(node, frame, run)
        if restored is not None:
            self.mirror.ended(node, frame, run, upstream, None)
            return restored
        try:
            config = self.resolve_config(node, handler, frame, skip_keys=handler.own_scope_keys)
            self.node_executions.resolved(node.id, frame.path, config)
            async with self.limits_held(self.resolve_limits(node, frame), node, frame, run):
                output = await run_container(self, node, frame, config)
            outcome = NodeResult(NodeStatus.COMPLETED, output, SOURCE)
        except NodeError as exc:
            outcome = NodeResult(NodeStatus.FAILED, error=error_info(exc, node.id, 1))
        failure = None if outcome.error is None else NodeError(outcome.error["message"])
        self.mirror.ended(node, frame, run, upstream, failure)
        return outcome

    def _seeded(self, node: PlanNode, frame: Frame, run: NodeRun) -> NodeResult | None:
        """The outcome the API seeded the journal with for this node execution, restored
        without resolving its templates (``policies.seeded``); None when there is none."""
        entry = self.journal.entry(node.id, frame.path)
        if entry is None or not seeded(entry.status, entry.key):
            return None
        completed, run.attempts = self.journal.restored(entry)
        return dataclasses.replace(self._completed(node, completed), restored=True)

    async def execute_leaf(self, node: PlanNode, frame: Frame, run: NodeRun, upstream: Mapping[str, Any]) -> NodeResult:
        restored = self._seeded(node, frame, run)
        if restored is not None:
            return restored
        handler = self.registry.handler(node.type)
        try:
            # Own-scope keys are the handler's to render (an agent's tools, with their call's args).
            config = self.resolve_config(node, handler, frame, skip_keys=handler.own_scope_keys)
        except NodeError as exc:
            run.attempts = 1
            self.mirror.ended(node, frame, run, upstream, exc)
            return NodeResult(NodeStatus.FAILED, error=error_info(exc, node.id, 1))
        self.node_executions.resolved(node.id, frame.path, config)
        key = node_cache_key(node, handler, config, upstream)
        entry = self.journal.entry(node.id, frame.path)
        if entry is not None and restores(node, entry.status, entry.key, key):
            completed, run.attempts = self.journal.restored(entry)
            return dataclasses.replace(self._completed(node, completed), restored=True)
        inline = runs_inline(node, handler, inline_control=self.inline_control)
        try:
            limits = self.resolve_limits(node, frame)
        except NodeError as exc:
            run.attempts = 1
            self.mirror.ended(node, frame, run, upstream, exc)
            return NodeResult(NodeStatus.FAILED, error=error_info(exc, node.id, 1))
        async with self.limits_held(limits, node, frame, run):
            if handler.in_flow:
                outcome = await self._run_in_flow(node, frame, run, handler, config, upstream, key)
            else:
                outcome = await self._run_leaf(node, frame, run, handler, config, upstream, key, inline)
        oversize = (
            oversize_error(outcome.output, self.max_node_output_bytes, node.id, run.attempts)
            if outcome.succeeded
            else None
        )
        if oversize is not None:  # refused before it is journaled, kept in result storage or shown
            outcome = NodeResult(NodeStatus.FAILED, error=oversize)
        if outcome.succeeded:
            completed = Completed(
                output=outcome.output, handles=outcome.handles, variables=outcome.variables, usage=outcome.usage
            )
            await self.journal.completed(
                node.id, frame.path, key, completed, run.attempts, durable=journals_durably(handler, inline=inline)
            )
        else:  # journaled by run_scope once the scheduler has decided whether it was caught
            self._failed_calls[(node.id, frame.path)] = FailedCall(key, config.model_dump(mode="json"), run.attempts)
        return outcome

    async def _run_in_flow(
        self,
        node: PlanNode,
        frame: Frame,
        run: NodeRun,
        handler: NodeHandler,
        config: Any,
        upstream: Mapping[str, Any],
        key: str,
    ) -> NodeResult:
        """A handler that uses the run itself (``NodeHandler.in_flow``): called once, here."""
        call = self._call(node, frame, handler, config, upstream, run, key)
        try:
            completed = await handler.run(config, call.make_context(1))
        except NodeError as exc:
            return NodeResult(NodeStatus.FAILED, error=error_info(exc, node.id, 1))
        finally:
            run.attempts = 1
        return self._completed(node, completed)

    async def _run_leaf(
        self,
        node: PlanNode,
        frame: Frame,
        run: NodeRun,
        handler: NodeHandler,
        config: Any,
        upstream: Mapping[str, Any],
        key: str,
        inline: bool,
    ) -> NodeResult:
        first_started = await self.journal.started(node.id, frame.path, key) if handler.resumes_waiting else None
        call = self._call(node, frame, handler, config, upstream, run, key, first_started, releasable=inline)
        if inline:
            if handler.resumes_waiting:  # it waits: show it running meanwhile
                self.mirror.started(node, frame, run, upstream)
            result = await self.inline.run(call)
            run.attempts = result.attempts
            self.mirror.ended(node, frame, run, upstream, result.error)
        else:
            async with self.slots:
                result = await self.runner.run(call)
            run.task_run_id = call.task_run_id
            self.mirror.ran_as_task()
        run.attempts = result.attempts
        if result.completed is None:
            return NodeResult(NodeStatus.FAILED, error=error_info(result.error, node.id, result.attempts))
        outcome = self._completed(node, result.completed)
        return dataclasses.replace(outcome, status=NodeStatus.CACHED) if result.cached else outcome

    def child_journal_id(self, node: PlanNode, frame: Frame, step: str | None = None) -> str:
        """Where a sub-workflow node's child run keeps its journal: the child executed again
        is a new flow run, which must find what the first one completed. ``step``: which of
        the node execution's children (an agent's tool call), when it starts several."""
        journal_id = f"{self.journal.journal_id}:{node.id}:{'.'.join(map(str, frame.path))}"
        if step:
            journal_id = f"{journal_id}:{step}"
        if len(journal_id) > 200:  # deep nesting: the store keeps 255 characters
            journal_id = f"{journal_id[:36]}:{hashlib.sha256(journal_id.encode()).hexdigest()[:40]}"
        return journal_id

    def _completed(self, node: PlanNode, completed: Completed) -> NodeResult:
        if completed.variables:
            self.variables.update(completed.variables)
        if completed.usage:
            for key, value in completed.usage.items():
                if isinstance(value, (int, float)):
                    self.record.usage[key] = self.record.usage.get(key, 0) + value
        return NodeResult(
            NodeStatus.COMPLETED,
            completed.output,
            frozenset(completed.handles),
            variables=dict(completed.variables),
            usage=dict(completed.usage or {}),
        )

    def resolve_limits(self, node: PlanNode, frame: Frame) -> tuple[ResolvedLimit, ...]:
        """The node's ``concurrency`` and ``rate_limit`` with their keys resolved (a key that
        does not render, names no limit or holds a secret fails the node)."""
        if self.limiter is None or (node.concurrency is None and node.rate_limit is None):
            return ()
        resolved = []
        for kind, spec in (("concurrency", node.concurrency), ("rate_limit", node.rate_limit)):
            if spec is None:
                continue
            try:
                rendered = render_value(spec.key, self.template_scope(node, frame), limits=self.template_limits)
            except TemplateRenderError as exc:
                raise NodeError(f"{kind}.key: {exc.message}", error_type="TemplateError") from exc
            if self.journal.redact(rendered) != rendered:  # it would be a limit's name, shown everywhere
                raise NodeError(f"{kind}.key must not contain a secret", error_type="ConfigError")
            resolved.append(resolved_limit(kind, self.owner, rendered, spec.limit))  # type: ignore[arg-type]
        return tuple(resolved)

    def limits_held(
        self, limits: tuple[ResolvedLimit, ...], node: PlanNode, frame: Frame, run: NodeRun
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The node's limits' slots, waited for (``node:waiting``) and held around its call."""
        if not limits or self.limiter is None:
            return contextlib.nullcontext()

        def waiting(limit: ResolvedLimit) -> None:
            self.bus.publish(
                EventType.NODE_WAITING,
                node_id=node.id,
                path=frame.path,
                reason=limit.kind,
                key=limit.key,
                limit=limit.limit,
            )

        async def long_wait(limit: ResolvedLimit) -> None:
            if self.release is not None and self.limit_release_s is not None and not self.others_running(run):
                log.info(
                    "node %s waited %.0f s for %s: letting go of the run", node.id, self.limit_release_s, limit.name
                )
                # Back to try again in limit_release_s: a release wakes a run WAKE_EARLY_S before
                # the time it is given (a delay's replay is paid before its end).
                again_s = self.limit_release_s + 1 + WAKE_EARLY_S
                await self.release(node.id, frame.path, utcnow() + timedelta(seconds=again_s))

        releasing = self.release is not None and self.limit_release_s is not None
        return self.limiter.held(
            limits,
            on_waiting=waiting,
            on_long_wait=long_wait if releasing else None,
            release_after_s=self.limit_release_s,
        )

    def resolve_config(
        self, node: PlanNode, handler: NodeHandler, frame: Frame, skip_keys: frozenset[str] = frozenset()
    ) -> Any:
        """Resolve the node's templates and validate the result with the handler's schema.
        ``skip_keys`` and the handler's ``literal_keys`` are taken as written."""
        skip_keys = skip_keys | handler.literal_keys
        data = {k: v for k, v in node.data.items() if k not in skip_keys}
        try:
            resolved = render_value(
                data,
                self.template_scope(node, frame),
                expression_keys=handler.expression_keys,
                limits=self.template_limits,
            )
        except TemplateRenderError as exc:
            raise NodeError(exc.message, error_type="TemplateError") from exc
        resolved.update({k: node.data[k] for k in skip_keys if k in node.data})
        try:
            return handler.Config.model_validate(resolved, context={RESOLVED: True})
        except ValidationError as exc:
            problems = "; ".join(
                f"data.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise NodeError(
                f"invalid configuration after resolving templates: {problems}", error_type="ConfigError"
            ) from exc

    def _call(
        self,
        node: PlanNode,
        frame: Frame,
        handler: NodeHandler,
        config: Any,
        upstream: Mapping[str, Any],
        run: NodeRun,
        key: str,
        first_started: Any = None,
        releasable: bool = False,
    ) -> NodeCall:
        """``key``: the node execution's cache key (``policies.node_cache_key``), Prefect's
        cache key when the node caches. ``releasable``: the node runs in the flow itself
        (inline), so it may let go of the run (a task run would take the release signal for
        its own failure)."""
        path = frame.path
        release = self.release if releasable else None
        capabilities = RunCapabilities(self, node, frame, run, key)

        async def release_until(until: datetime) -> None:
            if release is not None and not self.others_running(run):
                await release(node.id, path, until)

        def make_context(attempt: int) -> NodeContext:
            return NodeContext(
                node_id=node.id,
                path=path,
                run_id=self.record.id,
                workflow=self.plan.name,
                attempt=attempt,
                upstream=upstream,
                inputs=self.inputs,
                first_started=first_started,
                owner=self.owner,
                workflow_id=self.record.workflow_id,
                release_until=release_until,
                capabilities=capabilities,
                services=self.services,
                idempotency_key=f"{self.journal.journal_id}:{node.id}:{'.'.join(map(str, path))}",
                emit=lambda event_type, data: self.bus.publish(event_type, node_id=node.id, path=path, **data),
            )

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            run.attempts = attempt
            self.bus.publish(
                EventType.NODE_RETRYING,
                node_id=node.id,
                path=path,
                attempt=attempt,
                next_attempt_in_s=round(delay, 3),
                error=error_info(exc, node.id, attempt),
            )

        return NodeCall(
            node=node,
            path=path,
            handler=handler,
            config=config,
            make_context=make_context,
            cache_key=key if node.cache.enabled else None,
            on_retry=on_retry,
            task_run_name=task_run_name(node, frame),
            upstream_task_runs=upstream_task_runs(frame, upstream),
            parent_task_run=frame.container_task_run,
        )


async def _cancel_all(running: Mapping[asyncio.Task[Any], str]) -> None:
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
