"""Readiness, joins and skip propagation for one execution of a scope.

This is the scheduling algorithm with no I/O and no Prefect: the engine tells it which
node ended and which of its outgoing edges fired; it answers which nodes became ready
and which were skipped. One instance serves one execution of a scope (the top level,
or one iteration/branch of a container), so nothing leaks between iterations.

Rules (canvas spec, sections 3 and 4):
- an edge that does not fire is dead; a node whose incoming edges are all resolved and
  all dead is skipped, and its outgoing edges are dead too (skips propagate);
- ``join: all`` runs once every incoming edge is resolved and at least one fired;
- ``join: any`` runs on the first fired edge; later edges are ignored;
- every node runs at most once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import Enum

from builder.plan import Plan, ScopeId


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
