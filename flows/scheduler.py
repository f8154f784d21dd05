"""The run's rules for one execution of a scope (canvas spec, sections 3-6, and the run
output of section 1).

Nothing here does I/O, knows Prefect or reads a clock: the engine (``flows.engine``) feeds
a ``ScopeRun`` events ("node X ended with this outcome") and carries out its decisions
(start these nodes, record those as skipped or cancelled, cancel what still runs). One
``ScopeRun`` serves one execution of a scope: the top level, or one iteration or branch of
a container, so nothing leaks between iterations.

Two layers:

- ``ScopeScheduler`` is the graph algorithm: told which outgoing edges of an ended node
  fired, it answers which nodes became ready and which were skipped (joins, dead edges,
  skip propagation, every node at most once).
- ``ScopeRun`` applies the rules on outcomes around it: which edges fire (selected handles
  and edge conditions, ``fired_edges``), error routing along ``error`` edges, a broken edge
  condition failing its node, fail-fast versus continue, and what the scope returns
  (``scope_result``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from builder.conditions import ConditionError, evaluate_condition
from builder.plan import TOP, Plan, PlanEdge, PlanNode, ScopeId
from builder.templates import TemplateRenderError, render_value
from store.vocabulary import NodeStatus

ERROR_HANDLE = "error"
OnError = Literal["fail_fast", "continue"]
ResultKind = Literal["run", "body"]
EdgeScope = Callable[[], Mapping[str, Any]]
"""Gives the template scope an ended node's edge conditions are evaluated in (its own
output included). Called only when a condition is on a selected handle."""


# --- values ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeResult:
    """How a node execution ended, as its handler (or container) reported it. (What the
    run's journal keeps of it is a ``store.queries.NodeOutcome``.)"""

    status: str  # completed | cached | failed
    output: Any = None
    handles: frozenset[str] = frozenset()
    """The source handles it selected (when it succeeded)."""
    error: dict[str, Any] | None = None
    """``{message, type, node_id, attempts}`` (when it failed)."""
    restored: bool = False
    """Read back from the run's journal instead of executed (``flows.journal``)."""
    variables: Mapping[str, Any] = field(default_factory=dict)
    """Workflow variables it set (set_variable), as the journal keeps them."""
    usage: Mapping[str, Any] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status in (NodeStatus.COMPLETED, NodeStatus.CACHED)


def error_info(exc: BaseException, node_id: str, attempts: int) -> dict[str, Any]:
    """The error a failed node reports and its ``error`` edge passes on (section 5)."""
    error_type = getattr(exc, "error_type", None) or type(exc).__name__
    message = getattr(exc, "message", None) or str(exc) or error_type
    return {"message": message, "type": error_type, "node_id": node_id, "attempts": attempts}


@dataclass(frozen=True)
class NodeFailure:
    """A node that failed with no ``error`` edge firing to catch it."""

    node_id: str
    path: tuple[int, ...]
    error: dict[str, Any]


@dataclass(frozen=True)
class ScopeResult:
    """What one execution of a scope returns."""

    failures: tuple[NodeFailure, ...] = ()
    """Uncaught failures, in the order they happened; the scope failed if there is one."""
    output: Any = None
    """The run output (top level) or body result (container), when nothing failed."""
    output_error: str | None = None
    """The document ``output`` could not be rendered: the run fails (top level only)."""

    @property
    def failed(self) -> bool:
        return bool(self.failures)


@dataclass(frozen=True)
class Decision:
    """What follows from one node ending."""

    fired: frozenset[str]
    """Its outgoing edges that fired."""
    ready: tuple[str, ...] = ()
    """Nodes to start now, in scope order."""
    skipped: tuple[str, ...] = ()
    """Nodes whose incoming edges are all resolved and dead, in propagation order."""
    cancelled: tuple[str, ...] = ()
    """Nodes that became ready while the scope stops (fail fast): they never start."""
    failure: NodeFailure | None = None
    """The node failed and nothing caught it."""
    broken_condition: dict[str, Any] | None = None
    """The node had completed, but one of its edge conditions could not be evaluated:
    that is its failure (it must not pass silently), with this error."""


# --- section 3: which edges fire ----------------------------------------------------------------------


def selected_handles(outcome: NodeResult) -> frozenset[str]:
    """A success selects the handles its handler chose; a failure (after the last
    attempt) selects ``error`` and nothing else, so ``source`` never fires on failure."""
    return outcome.handles if outcome.succeeded else frozenset({ERROR_HANDLE})


def fired_edges(plan: Plan, node: PlanNode, handles: Collection[str], edge_scope: EdgeScope) -> frozenset[str]:
    """The outgoing edges of ``node`` that fire: on a selected handle, and with a
    ``data.condition`` that holds. A condition that cannot be evaluated raises
    ``TemplateRenderError`` or ``ConditionError``."""
    fired = []
    scope: Mapping[str, Any] | None = None
    for edge_id in node.outgoing:
        edge = plan.edges[edge_id]
        if edge.handle not in handles:
            continue
        if edge.condition is not None:
            if scope is None:
                scope = edge_scope()
            if not edge_holds(edge, scope):
                continue
        fired.append(edge_id)
    return frozenset(fired)


def edge_holds(edge: PlanEdge, scope: Mapping[str, Any]) -> bool:
    cond = edge.condition
    assert cond is not None
    left = render_value(cond.field, scope, field=f"edge {edge.id}: data.condition.field")
    right = render_value(cond.value, scope, field=f"edge {edge.id}: data.condition.value")
    try:
        return evaluate_condition(left, cond.operator, right)
    except ConditionError as exc:
        raise ConditionError(f"edge {edge.id}: {exc}") from exc


# --- section 4: readiness, joins, skips ----------------------------------------------------------------


class NodeState(str, Enum):
    WAITING = "waiting"
    READY = "ready"
    ENDED = "ended"
    SKIPPED = "skipped"


@dataclass
class Step:
    ready: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class ScopeScheduler:
    """Readiness of the nodes of one scope execution.

    - an edge that does not fire is dead; a node whose incoming edges are all resolved and
      all dead is skipped, and its outgoing edges are dead too (skips propagate);
    - ``join: all`` runs once every incoming edge is resolved and at least one fired;
    - ``join: any`` runs on the first fired edge; later edges are ignored;
    - every node runs at most once.
    """

    def __init__(self, plan: Plan, scope_id: ScopeId):
        self.plan = plan
        scope = plan.scopes[scope_id]
        self.order = {node_id: i for i, node_id in enumerate(scope.nodes)}
        self.roots = scope.roots
        self.unresolved = {n: len(plan.nodes[n].incoming) for n in scope.nodes}
        self.fired_in = dict.fromkeys(scope.nodes, 0)
        self.state = dict.fromkeys(scope.nodes, NodeState.WAITING)
        self.fired_edges: set[str] = set()

    def start(self) -> list[str]:
        for node_id in self.roots:
            self.state[node_id] = NodeState.READY
        return list(self.roots)

    def resolve(self, node_id: str, fired: Collection[str]) -> Step:
        """``node_id`` ended; of its outgoing edges, exactly ``fired`` fire."""
        self.state[node_id] = NodeState.ENDED
        step = Step()
        self._resolve_edges(node_id, fired, step)
        step.ready.sort(key=self.order.__getitem__)
        return step

    def undecided(self) -> list[str]:
        """Nodes that neither ran nor were skipped (after a fail-fast stop)."""
        return [n for n, s in self.state.items() if s is NodeState.WAITING]

    def fired_sources(self, node_id: str) -> list[str]:
        """The sources of the incoming edges of ``node_id`` that fired so far."""
        edges = self.plan.edges
        return [edges[e].source for e in self.plan.nodes[node_id].incoming if e in self.fired_edges]

    def _resolve_edges(self, node_id: str, fired: Collection[str], step: Step) -> None:
        worklist = [(node_id, fired)]
        while worklist:
            source, fired_now = worklist.pop()
            for edge_id in self.plan.nodes[source].outgoing:
                target = self.plan.edges[edge_id].target
                self.unresolved[target] -= 1
                if edge_id in fired_now:
                    self.fired_edges.add(edge_id)
                    self.fired_in[target] += 1
                if self.state[target] is not NodeState.WAITING:
                    continue  # already running or ended: a join-any discriminator ignores late edges
                decided = self._decide(target)
                if decided is NodeState.READY:
                    self.state[target] = NodeState.READY
                    step.ready.append(target)
                elif decided is NodeState.SKIPPED:
                    self.state[target] = NodeState.SKIPPED
                    step.skipped.append(target)
                    worklist.append((target, ()))

    def _decide(self, node_id: str) -> NodeState:
        fired, unresolved = self.fired_in[node_id], self.unresolved[node_id]
        if self.plan.nodes[node_id].join == "any":
            if fired:
                return NodeState.READY
            return NodeState.SKIPPED if unresolved == 0 else NodeState.WAITING
        if unresolved:
            return NodeState.WAITING
        return NodeState.READY if fired else NodeState.SKIPPED


# --- sections 5 and 6: outcomes, errors, what a scope returns ----------------------------------------


class ScopeRun:
    """One execution of a scope, fed the end of each node.

    ``outputs`` is where the scope's node outputs are kept (the engine passes its frame's,
    which templates read): this writes each ended node's output there as downstream nodes
    see it, ``{error: {...}}`` for a failed one.
    """

    def __init__(
        self,
        plan: Plan,
        scope_id: ScopeId,
        *,
        on_error: OnError = "fail_fast",
        path: tuple[int, ...] = (),
        outputs: dict[str, Any] | None = None,
    ):
        self.plan = plan
        self.scope_id = scope_id
        self.on_error = on_error
        self.path = path
        self.outputs: dict[str, Any] = {} if outputs is None else outputs
        self.graph = ScopeScheduler(plan, scope_id)
        self.order = self.graph.order
        self.completed: dict[str, None] = {}
        """Nodes that completed (or were cached), in the order they did."""
        self.failures: list[NodeFailure] = []
        self.stopping = False
        """A failure went uncaught under ``fail_fast``: start nothing new, cancel what runs."""

    def start(self) -> list[str]:
        return self.graph.start()

    def upstream(self, node_id: str) -> dict[str, Any]:
        """``{source: output}`` of the edges that fired into ``node_id`` (what ``merge``
        joins); taken when the node starts, so a join-any ignores later arrivals."""
        return {source: self.outputs.get(source) for source in self.graph.fired_sources(node_id)}

    def node_ended(self, node_id: str, outcome: NodeResult, edge_scope: EdgeScope, *, attempts: int = 1) -> Decision:
        """``node_id`` ended with ``outcome`` after ``attempts`` attempts: what follows."""
        node = self.plan.nodes[node_id]
        error = outcome.error
        broken = None
        if outcome.succeeded:
            self.outputs[node_id] = outcome.output
            try:
                fired = fired_edges(self.plan, node, selected_handles(outcome), edge_scope)
            except (TemplateRenderError, ConditionError) as exc:
                error = broken = error_info(exc, node_id, attempts)
            else:
                self.completed[node_id] = None
                return self._follow(node_id, fired, None, None)
        assert error is not None
        self.outputs[node_id] = {"error": error}
        try:
            fired = fired_edges(self.plan, node, {ERROR_HANDLE}, edge_scope)
        except (TemplateRenderError, ConditionError):
            fired = frozenset()  # a broken condition on an error edge cannot catch anything
        failure = None
        if not fired:  # caught only when an error edge actually fires (its condition may not hold)
            failure = NodeFailure(node_id, self.path, error)
            self.failures.append(failure)
            self.stopping = self.stopping or self.on_error == "fail_fast"
        return self._follow(node_id, fired, failure, broken)

    def never_started(self) -> list[str]:
        """After a fail-fast stop, the nodes that will not run (they are cancelled)."""
        return self.graph.undecided() if self.stopping else []

    def result(self, template_scope: Mapping[str, Any] | None = None) -> ScopeResult:
        """What the scope returns once no node runs any more. ``template_scope``
        (``inputs``, ``var``...) renders the document ``output`` of a run."""
        if self.failures:
            return ScopeResult(tuple(self.failures))
        completed = {n: self.outputs[n] for n in self.completed}
        kind: ResultKind = "run" if self.scope_id == TOP else "body"
        try:
            output = scope_result(self.plan, self.scope_id, completed, kind=kind, template_scope=template_scope)
        except TemplateRenderError as exc:
            return ScopeResult(output_error=exc.message)
        return ScopeResult(output=output)

    def _follow(
        self, node_id: str, fired: frozenset[str], failure: NodeFailure | None, broken: dict[str, Any] | None
    ) -> Decision:
        step = self.graph.resolve(node_id, fired)
        ready, cancelled = ((), tuple(step.ready)) if self.stopping else (tuple(step.ready), ())
        return Decision(fired, ready, tuple(step.skipped), cancelled, failure, broken)


def scope_result(
    plan: Plan,
    scope_id: ScopeId,
    completed: Mapping[str, Any],
    *,
    kind: ResultKind,
    template_scope: Mapping[str, Any] | None = None,
) -> Any:
    """What a scope returns, from ``completed`` (``{node_id: output}`` of its nodes that
    completed). The run and a container body follow different rules, by design:

    - ``kind="body"`` (section 6): the output of the body's single terminal node (``None``
      if it did not complete), or ``{node_id: output}`` of the completed terminals when
      there are several. A loop's ``results`` keep one value per iteration either way.
    - ``kind="run"`` (section 1): the document ``output`` rendered with every node of the
      scope in scope (``None`` when it did not complete); else the output of the single
      completed ``end`` node, or ``{node_id: output}`` of the completed ``end`` nodes when
      that is not exactly one; else ``{node_id: output}`` of the completed terminals, even
      for one (a run's output names what it comes from unless an ``end`` node says what
      the result is). Raises ``TemplateRenderError`` when ``output`` cannot be rendered.
    """
    scope = plan.scopes[scope_id]
    if kind == "body":
        if len(scope.terminals) == 1:
            return completed.get(scope.terminals[0])
        return {n: completed[n] for n in scope.terminals if n in completed}
    if plan.output is not None:
        outputs = {n: completed.get(n) for n in scope.nodes}
        return render_value(plan.output, dict(template_scope or {}) | {"nodes": outputs} | outputs, field="output")
    ends = [n for n in scope.nodes if plan.nodes[n].type == "end"]
    if ends:
        done = [n for n in ends if n in completed]
        return completed[done[0]] if len(done) == 1 else {n: completed[n] for n in done}
    return {n: completed[n] for n in scope.terminals if n in completed}
