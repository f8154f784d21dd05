"""What a process watches of the runs it executes: their traces (``flows.tracing``) and
metrics (``flows.run_metrics``).

The engine has one hook: every node execution runs inside ``observer.node(node, frame,
run)`` (``Execution.execute``), which opens the node's span, makes it the current one (so
an ``http`` node sends its ``traceparent`` and a child run's span hangs under its
sub-workflow node) and, when the node ends, closes it and counts it. The run's own span
and counts follow the run's events on its bus (``open_run``). A process with neither
traces nor metrics gives every run ``NO_OBSERVER``, whose hook does nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from builder.plan import PlanNode
from flows.events import RunEvent
from flows.frames import Frame
from flows.records import NodeRun
from flows.run_metrics import RunMetrics
from flows.scheduler import NodeResult
from flows.tracing import Tracing
from store.vocabulary import FINAL_EVENT_TYPES, EventType, NodeStatus

MODEL_NODE_OPERATIONS = {"llm": "chat", "router": "chat", "agent": "invoke_agent"}
"""GenAI ``gen_ai.operation.name`` of the node types that call a model."""


class NodeSeen:
    """Handed to the engine for one node execution: it sets ``result`` when the node ended."""

    __slots__ = ("result",)

    def __init__(self) -> None:
        self.result: NodeResult | None = None


class NodeObserver(Protocol):
    def node(self, node: PlanNode, frame: Frame, run: NodeRun) -> AbstractContextManager[NodeSeen]: ...


class _Unobserved:
    """A reusable context manager that observes nothing (tracing and metrics off)."""

    __slots__ = ()

    def __enter__(self) -> NodeSeen:
        return NodeSeen()

    def __exit__(self, *exc: object) -> None:
        return None


class NoObserver:
    _unobserved = _Unobserved()

    def node(self, node: PlanNode, frame: Frame, run: NodeRun) -> AbstractContextManager[NodeSeen]:
        return self._unobserved

    def event(self, event: RunEvent) -> None:
        return None

    def close(self) -> None:
        return None


NO_OBSERVER = NoObserver()


@dataclass(frozen=True)
class RunFacts:
    """What the observers know of a run when it opens."""

    run_id: str
    workflow: str
    workflow_id: str | None
    version: int | None
    trigger: str | None
    traceparent: str | None
    """The request's that started it (its flow run's label), for a top-level run."""
    start_delay_s: float | None
    """From accepted to this first start; None for child runs and runs executed again."""


def start_delay_of(flow_run: Any, now: datetime | None = None) -> float | None:
    """From a flow run accepted (created, or due when scheduled later) to now, for its
    first execution as a top-level run; None otherwise."""
    if flow_run is None or getattr(flow_run, "parent_task_run_id", None) is not None:
        return None
    if (getattr(flow_run, "run_count", 0) or 0) > 1:
        return None
    accepted: list[datetime] = [
        t for t in (getattr(flow_run, "created", None), getattr(flow_run, "expected_start_time", None)) if t
    ]
    if not accepted:
        return None
    return ((now or datetime.now(UTC)) - max(accepted)).total_seconds()


class RunObserver:
    """The observer of one run: its span and its node spans (traces on), its counts (metrics on)."""

    def __init__(self, facts: RunFacts, tracing: Tracing | None, metrics: RunMetrics | None) -> None:
        self.facts, self.tracing, self.metrics = facts, tracing, metrics
        self.workflow = facts.workflow
        self._started: float | None = None
        self.span: Span | None = None
        self._containers: dict[tuple[str, tuple[int, ...]], Span] = {}
        """The spans of the container executions under way, by (node id, path)."""
        if tracing is not None:
            attributes: dict[str, Any] = {
                "flowmaestro.run.id": facts.run_id,
                "flowmaestro.workflow": facts.workflow,
            }
            if facts.workflow_id is not None:
                attributes["flowmaestro.workflow.id"] = facts.workflow_id
            if facts.version is not None:
                attributes["flowmaestro.workflow.version"] = facts.version
            if facts.trigger:
                attributes["flowmaestro.run.trigger"] = facts.trigger
            self.span = tracing.start_run_span(f"run {facts.workflow}", facts.traceparent, attributes)
        if metrics is not None and facts.start_delay_s is not None:
            metrics.run_started(facts.start_delay_s)

    def event(self, event: RunEvent) -> None:
        """The run's span and duration follow its events (a bus subscriber)."""
        if event.type == EventType.EXECUTION_STARTED:
            self._started = time.perf_counter()
            # A saved workflow's name is known once its version is loaded: it names what follows.
            workflow = event.data.get("workflow")
            if isinstance(workflow, str) and workflow != self.workflow:
                self.workflow = workflow
                if self.span is not None:
                    self.span.update_name(f"run {workflow}")
                    self.span.set_attribute("flowmaestro.workflow", workflow)
        elif event.type in FINAL_EVENT_TYPES and event.type != EventType.EXECUTION_RETRIED:
            status = str(event.data.get("status") or event.type.split(":", 1)[1])
            if self.metrics is not None and self._started is not None:
                self.metrics.run_ended(self.workflow, status, time.perf_counter() - self._started)
            if self.span is not None:
                self.span.set_attribute("flowmaestro.run.status", status)
                error = event.data.get("error")
                if status == "failed":
                    message = error.get("message") if isinstance(error, Mapping) else None
                    self.span.set_status(Status(StatusCode.ERROR, str(message or "failed")))
                elif status == "completed":
                    self.span.set_status(Status(StatusCode.OK))

    def close(self) -> None:
        """The run's span ends (the run ended, or let go of its worker: then with no status)."""
        if self.span is not None:
            self.span.end()
            self.span = None

    @contextmanager
    def node(self, node: PlanNode, frame: Frame, run: NodeRun) -> Iterator[NodeSeen]:
        seen = NodeSeen()
        span, token = None, None
        if self.tracing is not None and self.span is not None:
            # A body's nodes under their container's execution, the others under the run.
            parent = self._containers.get((frame.scope_id, frame.parent.path)) if frame.parent else None
            span = self.tracing.start_node_span(
                f"{node.type} {node.id}",
                parent or self.span,
                {
                    "flowmaestro.node.id": node.id,
                    "flowmaestro.node.type": node.type,
                    "flowmaestro.node.path": ".".join(map(str, frame.path)),
                },
            )
            if node.container:
                self._containers[(node.id, frame.path)] = span
            token = otel_context.attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        status = NodeStatus.CANCELLED
        try:
            yield seen
            if seen.result is not None:
                status = NodeStatus(seen.result.status)
        except asyncio.CancelledError:
            raise
        except BaseException:
            status = NodeStatus.FAILED
            raise
        finally:
            seconds = time.perf_counter() - started
            result = seen.result
            usage = result.usage if result is not None else None
            spent = result is not None and not result.restored and status != NodeStatus.CACHED
            if self.metrics is not None:
                self.metrics.node_ended(self.workflow, node.type, status, seconds, usage, spent)
            if span is not None:
                if token is not None:
                    otel_context.detach(token)
                self._containers.pop((node.id, frame.path), None)
                _end_node_span(span, node, run, status, result)


def _end_node_span(span: Span, node: PlanNode, run: NodeRun, status: str, result: NodeResult | None) -> None:
    span.set_attribute("flowmaestro.node.status", status)
    span.set_attribute("flowmaestro.node.attempts", run.attempts)
    if result is not None and result.restored:
        span.set_attribute("flowmaestro.node.restored", True)
    usage = result.usage if result is not None else None
    operation = MODEL_NODE_OPERATIONS.get(node.type)
    if operation is not None:
        _model_attributes(span, node, operation, usage or {})
    if status == NodeStatus.FAILED:
        error = (result.error if result is not None else None) or {}
        span.set_status(Status(StatusCode.ERROR, str(error.get("message") or "failed")))
        if error.get("type"):
            span.set_attribute("error.type", str(error["type"]))
    elif status in (NodeStatus.COMPLETED, NodeStatus.CACHED):
        span.set_status(Status(StatusCode.OK))
    span.end()


def _model_attributes(span: Span, node: PlanNode, operation: str, usage: Mapping[str, Any]) -> None:
    """OpenTelemetry's GenAI semantic conventions for a node that calls a model."""
    span.set_attribute("gen_ai.operation.name", operation)
    provider = node.data.get("provider")
    span.set_attribute("gen_ai.system", provider if isinstance(provider, str) and "{" not in provider else "openai")
    answered = usage.get("model")
    asked = node.data.get("model")
    if isinstance(asked, str) and asked and "{" not in asked:
        span.set_attribute("gen_ai.request.model", asked)
    elif isinstance(answered, str):
        span.set_attribute("gen_ai.request.model", answered)
    if isinstance(answered, str):
        span.set_attribute("gen_ai.response.model", answered)
    for kind in ("input", "output"):
        tokens = usage.get(f"{kind}_tokens")
        if isinstance(tokens, int):
            span.set_attribute(f"gen_ai.usage.{kind}_tokens", tokens)
    cost = usage.get("cost_usd")
    span.set_attribute("flowmaestro.cost_usd", float(cost) if isinstance(cost, int | float) else 0.0)


class Observability:
    """What a process watches of its runs: traces when the ``OTEL_*`` variables ask for them,
    metrics when it serves them (a worker)."""

    def __init__(self, tracing: Tracing | None = None, metrics: RunMetrics | None = None) -> None:
        self.tracing, self.metrics = tracing, metrics

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Observability:
        return cls(Tracing.from_environment(environ))

    @property
    def active(self) -> bool:
        """Whether runs are watched at all (traces or metrics)."""
        return self.tracing is not None or self.metrics is not None

    def run(self, facts: RunFacts) -> RunObserver | NoObserver:
        if not self.active:
            return NO_OBSERVER
        return RunObserver(facts, self.tracing, self.metrics)

    async def close(self) -> None:
        if self.tracing is not None:
            # Sends the batch left (blocking, bounded by the exporter's timeout): off the event loop.
            await asyncio.to_thread(self.tracing.shutdown)
