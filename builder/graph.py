"""Small graph algorithms the compiler needs, iterative so 50k-node canvases do not hit
Python's recursion limit."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence


def find_cycles(nodes: Sequence[str], successors: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Strongly connected components that form cycles (Tarjan), each listed in edge order
    starting from its smallest id. Edges to nodes outside ``nodes`` are ignored."""
    members = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
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
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    item = stack.pop()
                    on_stack.discard(item)
                    component.append(item)
                    if item == node:
                        break
                if len(component) > 1 or node in successors.get(node, ()):
                    cycles.append(_cycle_order(component, successors))
    return cycles


def _cycle_order(component: list[str], successors: Mapping[str, Sequence[str]]) -> list[str]:
    """Walk the component from its smallest id so the message reads as a path."""
    members = set(component)
    start = min(component)
    order = [start]
    seen = {start}
    current = start
    while True:
        nxt = next((s for s in successors.get(current, ()) if s in members and s not in seen), None)
        if nxt is None:
            break
        order.append(nxt)
        seen.add(nxt)
        current = nxt
    order += sorted(members - seen)
    return order


def longest_path_levels(nodes: Iterable[str], successors: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Level of each node: the longest edge count from a root (Kahn's order). Nodes on
    cycles keep the level they had when the walk stopped."""
    members = set(nodes)
    indegree = {n: 0 for n in members}
    for n in members:
        for s in successors.get(n, ()):
            if s in members:
                indegree[s] += 1
    level = {n: 0 for n in members}
    queue = deque(n for n in members if indegree[n] == 0)
    while queue:
        n = queue.popleft()
        for s in successors.get(n, ()):
            if s not in members:
                continue
            level[s] = max(level[s], level[n] + 1)
            indegree[s] -= 1
            if indegree[s] == 0:
                queue.append(s)
    return level


def is_upstream(
    candidate: str, node: str, predecessors: Mapping[str, Sequence[str]], levels: Mapping[str, int]
) -> bool:
    """Whether a path leads from ``candidate`` to ``node``. Searches backwards from
    ``node`` and prunes every node whose level is not above the candidate's, so a
    reference to a nearby node costs a few steps even in a huge graph."""
    target_level = levels.get(candidate, 0)
    if levels.get(node, 0) <= target_level:
        return False
    seen = {node}
    stack = [node]
    while stack:
        current = stack.pop()
        for pred in predecessors.get(current, ()):
            if pred == candidate:
                return True
            if pred not in seen and levels.get(pred, 0) > target_level:
                seen.add(pred)
                stack.append(pred)
    return False
