"""Small graph algorithms the compiler needs, iterative so 50k-node canvases do not hit
Python's recursion limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from builder.plan import TOP


@dataclass(frozen=True)
class Cycle:
    """A strongly connected component of more than one node (or a node with an edge to itself)."""

    path: tuple[str, ...]
    """A simple cycle through the component's smallest id, starting there, in edge order:
    ``path[0] -> path[1] -> ... -> path[0]``; every step is an edge."""
    others: tuple[str, ...] = ()
    """The component's other nodes (on other cycles through the same nodes), sorted."""

    @property
    def members(self) -> tuple[str, ...]:
        return self.path + self.others


@dataclass(frozen=True)
class ScopeGraph:
    """What the compiler needs to know about the edges of one scope."""

    cycles: list[Cycle]
    levels: dict[str, int]
    """Longest edge count from a root, with each strongly connected component counted as one
    node (its members share a level): along any edge the level never decreases, and it
    grows unless both ends are on the same cycle."""
    component: dict[str, str] = field(default_factory=dict)
    """For nodes on a cycle: the smallest id of their component."""


def analyse_scope(nodes: Sequence[str], successors: Mapping[str, Sequence[str]]) -> ScopeGraph:
    """Cycles (Tarjan's strongly connected components) and levels of the scope made of
    ``nodes``. Edges to nodes outside ``nodes`` are ignored."""
    components = _components(nodes, successors)
    cycles: list[Cycle] = []
    component_of: dict[str, str] = {}
    for members in components:
        if len(members) > 1 or members[0] in successors.get(members[0], ()):
            cycle = _simple_cycle(members, successors)
            cycles.append(cycle)
            for member in members:
                component_of[member] = cycle.path[0]
    cycles.sort(key=lambda c: c.path[0])
    return ScopeGraph(cycles, _levels(components, successors), component_of)


def _components(nodes: Sequence[str], successors: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Strongly connected components in reverse topological order (Tarjan emits a
    component after every component it leads to)."""
    members = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in members:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack and index[child] < low[node]:
                    low[node] = index[child]
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[node] < low[parent]:
                    low[parent] = low[node]
            if low[node] == index[node]:
                if stack[-1] == node:  # the usual case: a component of one node
                    stack.pop()
                    on_stack.discard(node)
                    components.append([node])
                    continue
                component = []
                while True:
                    item = stack.pop()
                    on_stack.discard(item)
                    component.append(item)
                    if item == node:
                        break
                components.append(component)
    return components


def _simple_cycle(component: list[str], successors: Mapping[str, Sequence[str]]) -> Cycle:
    """The shortest cycle through the component's smallest id (breadth-first, following
    edges in their order), and the component's other members."""
    members = set(component)
    start = min(component)
    parent: dict[str, str] = {}
    queue = deque([start])
    end = None
    while queue and end is None:
        current = queue.popleft()
        for nxt in successors.get(current, ()):
            if nxt == start:
                end = current
                break
            if nxt in members and nxt not in parent:
                parent[nxt] = current
                queue.append(nxt)
    path = []
    node = end if end is not None else start  # a strongly connected component always has one
    while node != start:
        path.append(node)
        node = parent[node]
    path.append(start)
    path.reverse()
    return Cycle(tuple(path), tuple(sorted(members - set(path))))


def _levels(components: list[list[str]], successors: Mapping[str, Sequence[str]]) -> dict[str, int]:
    level: dict[str, int] = {}
    for members in reversed(components):  # topological order of the components
        if len(members) == 1:
            node = members[0]
            base = level.setdefault(node, 0)
            for nxt in successors.get(node, ()):
                # Only nodes of this scope that come later have no final level yet.
                if nxt != node and level.get(nxt, -1) <= base:
                    level[nxt] = base + 1
            continue
        inside = set(members)
        base = max(level.get(member, 0) for member in members)
        for member in members:
            level[member] = base
        for member in members:
            for nxt in successors.get(member, ()):
                if nxt not in inside and level.get(nxt, -1) <= base:
                    level[nxt] = base + 1
    return {node: level[node] for members in components for node in members}


class Ancestry:
    """Which nodes of one scope lead to which: for each node, the set of its ancestors as
    the bits of a Python int, built in one pass over the scope in level order.

    A reference check asks "is ``candidate`` upstream of ``node``?" once per reference; a
    search backwards from ``node`` per question is quadratic on a long chain whose nodes
    all read its first node (16,000 transforms: 55 s). Here each node's ancestors are the
    union of its predecessors' ancestors and the predecessors themselves: one OR of ints
    per edge (word operations in C), then one AND per question. The nodes of a cycle
    share one bit and lead to each other.
    """

    def __init__(
        self,
        members: Sequence[str],
        predecessors: Mapping[str, Sequence[str]],
        levels: Mapping[str, int],
        component: Mapping[str, str] | None = None,
    ):
        """``members``: the scope's nodes that run; ``levels`` and ``component`` from
        :func:`analyse_scope` (along an edge the level grows, unless both ends are on one
        cycle), so level order is a topological order of the cycles' condensation."""
        components = component or {}
        order = sorted(members, key=lambda n: levels.get(n, 0))
        bit_of_key: dict[str, int] = {}
        self._bit: dict[str, int] = {}
        for node in order:
            key = components.get(node, node)
            bit = bit_of_key.get(key)
            if bit is None:
                bit = bit_of_key[key] = 1 << len(bit_of_key)
            self._bit[node] = bit
        self._ancestors: dict[str, int] = {}
        cycles: dict[str, int] = {}  # a cycle's key -> the ancestors of all its members
        start = 0
        while start < len(order):  # one level at a time: a cycle's members share theirs
            level = levels.get(order[start], 0)
            stop = start
            while stop < len(order) and levels.get(order[stop], 0) == level:
                stop += 1
            group = order[start:stop]
            for node in group:
                bit, found = self._bit[node], 0
                for pred in predecessors.get(node, ()):
                    pred_bit = self._bit.get(pred)  # (None: a node that never runs)
                    if pred_bit is not None and pred_bit != bit:
                        found |= self._ancestors[pred] | pred_bit
                cycle = components.get(node)
                if cycle is None:
                    self._ancestors[node] = found
                else:
                    cycles[cycle] = cycles.get(cycle, 0) | found
            for node in group:
                cycle = components.get(node)
                if cycle is not None:
                    self._ancestors[node] = cycles[cycle] | self._bit[node]
            start = stop

    def is_upstream(self, candidate: str, node: str) -> bool:
        """Whether a path of edges leads from ``candidate`` to ``node`` (both of this scope)."""
        bit = self._bit.get(candidate)
        return bit is not None and bool(self._ancestors.get(node, 0) & bit)


def container_path(scope_of: Mapping[str, str], node_id: str) -> tuple[str, ...]:
    """Enclosing containers of a node, innermost first: its container, that one's
    container, ... (``scope_of`` maps each node to its container or ``TOP``, and has no
    cycles)."""
    path = []
    current = scope_of.get(node_id, TOP)
    while current != TOP:
        path.append(current)
        current = scope_of.get(current, TOP)
    return tuple(path)
