"""Stage 7b: warn about templates that read into a node that may have been skipped.

A node behind a conditional handle (a condition's ``condition-<id>``/``else``, a router's
``route-<id>``, an approval's outcomes, an ``error`` edge, any edge with a
``data.condition``) is skipped when no path to it fires, and then reads as ``none``.
``{{ refund.body.id }}`` on a skipped ``refund`` fails the run, possibly after side
effects of other branches; the compiler says so at validate/save, as a warning.

Two facts per scope, on a graph where each conditional handle (or edge with a condition)
is a vertex of its own between its source and its targets:

* ``certain[X]``: the nodes that surely run once X runs (or fires). A node's ordinary
  edges fire when it completes; of its handles, at least one fires, so what every one of
  them leads to is certain (two branches that meet again make their meeting point
  certain); an edge with a condition, or an ``error`` edge, may not fire.
* dominators: X dominates R when every path from a root to R goes through X, so R runs
  only after X ran (or fired).

A read of T by R is safe when some dominator X of R has T in ``certain[X]`` (the roots
included). The workflow ``output`` is read at the end of the run, whatever ran: it is safe
when T is certain from the roots. Failures are left out (a failure without an error edge
fails the run anyway). Templates that test the node first (``refund and refund.body.id``,
``... if refund else ...``) or read it whole (``coalesce(refund, {})``) are not reported
(``builder.templates.guards``).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable

from builder.draft import Draft
from builder.issues import Issue
from builder.limits import NO_DEADLINE, Deadline
from builder.plan import TOP
from builder.templates.guards import template_strings, unguarded_dereferences

Vertex = tuple[str, str]
"""("node", id), ("handle", "<source>\\0<handle>"), ("edge", edge id) or ROOT."""
ROOT: Vertex = ("root", "")
ORDINARY = "source"
"""The handle that fires whenever its node completes."""
NEVER_SURE = frozenset({"error"})
"""Handles left out of "at least one of its handles fires": failures are not planned for."""


class ScopeFacts:
    """Dominators and certain successors of one scope's acyclic graph."""

    def __init__(self, successors: dict[Vertex, list[Vertex]], handles_of: dict[Vertex, frozenset[str]]):
        predecessors: dict[Vertex, list[Vertex]] = defaultdict(list)
        for vertex, nexts in successors.items():
            for nxt in nexts:
                predecessors[nxt].append(vertex)
        self.predecessors = predecessors
        self.idom: dict[Vertex, Vertex] = {ROOT: ROOT}
        self.depth: dict[Vertex, int] = {ROOT: 0}
        order = [ROOT]
        # In topological order, a vertex's immediate dominator is the nearest common
        # dominator of its predecessors (the scope is acyclic: cycles stop this stage).
        indegree: dict[Vertex, int] = defaultdict(int)
        for nexts in successors.values():
            for nxt in nexts:
                indegree[nxt] += 1
        queue = deque([ROOT])
        while queue:
            vertex = queue.popleft()
            for nxt in successors.get(vertex, ()):
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    common = predecessors[nxt][0]
                    for other in predecessors[nxt][1:]:
                        common = self._meet(common, other)
                    self.idom[nxt], self.depth[nxt] = common, self.depth[common] + 1
                    order.append(nxt)
                    queue.append(nxt)
        # certain[X] as a bit set over the scope's vertices, from the sinks back.
        self.bit = {vertex: 1 << index for index, vertex in enumerate(order)}
        self.certain: dict[Vertex, int] = {}
        for vertex in reversed(order):
            nexts = successors.get(vertex, [])
            if vertex[0] == "edge":  # its condition may not hold
                sure = 0
            elif vertex[0] == "node":
                sure = self._node_certain(vertex, nexts, handles_of.get(vertex, frozenset({ORDINARY})))
            else:  # the roots all run; a handle that fires fires all its edges
                sure = 0
                for nxt in nexts:
                    sure |= self.certain[nxt]
            self.certain[vertex] = self.bit[vertex] | sure
        self._surely: dict[Vertex, dict[Vertex, bool]] = {}
        """Per target: whether some dominator of a vertex (itself included) has it certain."""

    def _node_certain(self, vertex: Vertex, nexts: list[Vertex], handles: frozenset[str]) -> int:
        """What surely runs after a node: at least one of its handles fires."""
        ordinary = 0
        by_handle: dict[str, int] = {}
        for nxt in nexts:
            if nxt[0] == "node":
                ordinary |= self.certain[nxt]
            elif nxt[0] == "handle":
                by_handle[nxt[1].split("\0", 1)[1]] = self.certain[nxt]
        sure = -1  # every bit: the intersection of nothing yet
        choices = handles - NEVER_SURE
        if not choices:
            return 0
        for handle in choices:
            sure &= ordinary if handle == ORDINARY else by_handle.get(handle, 0)
        return sure

    def _meet(self, a: Vertex, b: Vertex) -> Vertex:
        while a != b:
            if self.depth[a] >= self.depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def runs_before(self, target: Vertex, reader: Vertex | None) -> bool:
        """Whether ``target`` surely ran when ``reader`` runs (None: at the end of the run)."""
        bit = self.bit.get(target)
        if bit is None:
            return True  # not in this graph: nothing to say
        if reader is None:
            return bool(self.certain[ROOT] & bit)
        if reader not in self.idom:
            return True
        # Up the dominator tree from the reader's immediate dominator, until one has the
        # target among its certain successors. Each vertex's answer is kept per target, so a
        # walk stops where an earlier one passed: linear in all, where a chain of n nodes
        # each reading the first would otherwise walk n * n / 2 steps.
        known = self._surely.setdefault(target, {})
        path: list[Vertex] = []
        vertex = self.idom[reader]
        while True:
            answer = known.get(vertex)
            if answer is not None:
                break
            path.append(vertex)
            if self.certain[vertex] & bit:
                answer = True
                break
            if vertex == ROOT:
                answer = False
                break
            vertex = self.idom[vertex]
        for passed in path:
            known[passed] = answer
        return answer

    def guard_of(self, target: Vertex) -> Vertex | None:
        """The conditional handle or edge nearest in front of ``target``, for the message."""
        vertex = self.idom.get(target)
        while vertex is not None and vertex != ROOT:
            if vertex[0] in ("handle", "edge"):
                return vertex
            vertex = self.idom[vertex]
        seen, queue = {target}, deque([target])
        while queue:  # not on every path: the first one found walking back
            for previous in self.predecessors.get(queue.popleft(), ()):
                if previous[0] in ("handle", "edge"):
                    return previous
                if previous not in seen:
                    seen.add(previous)
                    queue.append(previous)
        return None


def _scope_facts(draft: Draft) -> dict[str, ScopeFacts]:
    successors: dict[str, dict[Vertex, list[Vertex]]] = defaultdict(lambda: defaultdict(list))
    has_incoming: set[str] = set()
    for edge_id, handle in draft.handles.items():
        edge = draft.edges[edge_id]
        if edge.source in draft.excluded or edge.target in draft.excluded:
            continue
        graph = successors[draft.scope_of[edge.source]]
        source, target = ("node", edge.source), ("node", edge.target)
        has_incoming.add(edge.target)
        if edge.data is not None and edge.data.condition is not None:
            guard: Vertex | None = ("edge", edge_id)
        elif handle != ORDINARY:
            guard = ("handle", f"{edge.source}\0{handle}")
        else:
            guard = None
        if guard is None:
            graph[source].append(target)
        else:
            if guard not in graph[source]:
                graph[source].append(guard)
            graph[guard].append(target)
    handles_of: dict[Vertex, frozenset[str]] = {}
    for node_id, scope in draft.scope_of.items():
        if node_id in draft.excluded:
            continue
        spec, config = draft.specs.get(node_id), draft.configs.get(node_id)
        if spec is not None and config is not None:
            handles_of[("node", node_id)] = frozenset(spec.handles(config))
        if node_id not in has_incoming:
            successors[scope][ROOT].append(("node", node_id))
    return {scope: ScopeFacts(graph, handles_of) for scope, graph in successors.items()}


def _describe(guard: Vertex | None) -> str:
    if guard is None:
        return "some branches"
    if guard[0] == "edge":
        return f"the condition of edge {guard[1]!r} holds"
    source, handle = guard[1].split("\0")
    return f"{source!r} fires its {handle!r} handle"


def _message(field: str, reader: str | None, target: str, guard: Vertex | None) -> str:
    who = "the workflow output" if reader is None else f"{field} of {reader!r}"
    return (
        f"{who} reads into {target!r}, which runs only when {_describe(guard)}; when it is "
        f"skipped it reads as none and this template fails the run: test it first "
        f"({{{{ {target} and {target}.… }}}}) or use coalesce(...) (docs/canvas.md)"
    )


def check_skippable_reads(draft: Draft, deadline: Deadline = NO_DEADLINE) -> Draft:
    if draft.components:  # a cycle: an error already, and this needs an acyclic graph
        return draft
    facts = _scope_facts(draft)
    issues: list[Issue] = []

    def may_be_skipped(target: str, reader: str | None) -> bool:
        scope = draft.scope_of.get(target, TOP)
        graph = facts.get(scope)
        if graph is None or target not in draft.scope_of:
            return False
        if reader is None:
            return not graph.runs_before(("node", target), None)
        # The reader itself, or its enclosing container that sits in the target's scope.
        lifted = reader
        while lifted in draft.scope_of and draft.scope_of[lifted] != scope:
            lifted = draft.scope_of[lifted]
        if lifted not in draft.scope_of or lifted == target:
            return False
        return not graph.runs_before(("node", target), ("node", lifted))

    def check(
        reader: str | None, strings: Iterable[tuple[str, str, bool]], reads: frozenset[str], edge_id: str | None = None
    ) -> None:
        suspects = frozenset(t for t in reads if may_be_skipped(t, reader))
        if not suspects:
            return
        for field, text, as_expression in strings:
            for target in sorted(unguarded_dereferences(text, as_expression, suspects)):
                graph = facts[draft.scope_of.get(target, TOP)]
                issues.append(
                    Issue(
                        "reads_skippable_node",
                        _message(field, reader, target, graph.guard_of(("node", target))),
                        node_id=None if edge_id else reader,
                        edge_id=edge_id,
                        field=field,
                        severity="warning",
                        related=(target,),
                    )
                )

    for count, (node_id, reads) in enumerate(draft.references.items()):
        if count % 256 == 0:
            deadline.check("skipped-branch reads")
        spec, node = draft.specs.get(node_id), draft.nodes.get(node_id)
        if spec is None or node is None or not reads:
            continue
        keys = spec.expression_keys | spec.own_scope_keys
        check(node_id, template_strings(node.data, keys, "data"), reads)
    for edge_id in draft.handles:
        edge = draft.edges[edge_id]
        condition = edge.data.condition if edge.data else None
        if condition is None or edge.source in draft.excluded:
            continue
        strings = template_strings({"field": condition.field, "value": condition.value}, frozenset(), "data.condition")
        check(edge.source, strings, draft.references.get(edge.source, frozenset()), edge_id)
    if draft.header is not None and draft.header.output is not None:
        top = frozenset(n for n, s in draft.scope_of.items() if s == TOP and n not in draft.excluded)
        check(None, template_strings(draft.header.output, frozenset(), "output"), top)
    return draft.add(*issues)
