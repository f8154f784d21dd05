"""What a rerun and a node test start from: the journal the API seeds for their new run.

Both are ordinary runs of the workflow's deployment (a worker executes them, the Prefect UI
shows them as any run) whose journal is not empty when they start: the API writes entries
keyed ``flows.policies.SEEDED_KEY`` under a new journal id and hands that id to the run
(its ``journal`` parameter). The engine gives a seeded node execution its outcome instead of
executing it, before resolving its templates (``Execution._seeded``).

- A **rerun** from ``from_node`` seeds every node execution that completed in the source
  run, except those of the nodes that must execute: ``from_node`` (its top-level container
  when it is inside one: a body runs whole or not at all) and every top-level node
  downstream of it (``downstream_of``). ``pinned`` outputs are seeded too, whatever their place.
- A **node test** seeds every other top-level node: the pinned ones with their output, the
  rest with ``null``, each with every non-error handle of its outgoing edges, so that the
  tested node starts and nothing else executes.

Pure functions of the plan and the source's journal: no I/O here (``api.debugging``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from builder.plan import TOP, Plan
from flows.policies import SEEDED_KEY
from store.errors import Invalid
from store.queries import NodeOutcome

ERROR_HANDLE = "error"


def top_level_of(plan: Plan, node_id: str) -> str:
    """The top-level node ``node_id`` is, or is inside of (its outermost container)."""
    while plan.nodes[node_id].scope != TOP:
        node_id = plan.nodes[node_id].scope
    return node_id


def downstream_of(plan: Plan, node_id: str) -> frozenset[str]:
    """``node_id`` (top-level) and every top-level node an edge path leads to from it."""
    seen = {node_id}
    todo = [node_id]
    while todo:
        for edge_id in plan.nodes[todo.pop()].outgoing:
            target = plan.edges[edge_id].target
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(seen)


def check_node(plan: Plan, node_id: str, field: str) -> None:
    """``Invalid`` naming ``field`` when the plan has no such node."""
    if node_id not in plan.nodes:
        raise Invalid(
            f"{field}: the workflow has no node {node_id!r}",
            [{"field": field, "code": "unknown_node", "message": f"no node {node_id!r} in this version"}],
        )


def check_pinned(plan: Plan, pinned: Mapping[str, Any]) -> None:
    """Pinned nodes exist and are top-level (a body node runs once per iteration: it has no
    one output to pin)."""
    for node_id in pinned:
        field = f"pinned.{node_id}"
        check_node(plan, node_id, field)
        if plan.nodes[node_id].scope != TOP:
            raise Invalid(
                f"{field}: {node_id!r} is inside container {plan.nodes[node_id].scope!r}: pin the container instead",
                [{"field": field, "code": "not_top_level", "message": "only top-level nodes can be pinned"}],
            )


def _forward_handles(plan: Plan, node_id: str) -> list[str]:
    """The handles of a node's outgoing edges that fire on success (all but ``error``)."""
    handles = {plan.edges[e].handle for e in plan.nodes[node_id].outgoing} - {ERROR_HANDLE}
    return sorted(handles or {"source"})


def _seed(node_id: str, output: Any, handles: Iterable[str], now: datetime) -> NodeOutcome:
    outcome = {"output": output, "handles": sorted(handles), "variables": {}, "usage": {}}
    return NodeOutcome(node_id, (), SEEDED_KEY, "completed", outcome, 1, started_at=now, ended_at=now)


def rerun_seed(
    plan: Plan, from_node: str, source: Iterable[NodeOutcome], pinned: Mapping[str, Any], now: datetime
) -> tuple[str, list[NodeOutcome]]:
    """The top-level node the rerun starts from, and the entries of its journal."""
    start = top_level_of(plan, from_node)
    executes = downstream_of(plan, start)
    entries: list[NodeOutcome] = []
    source_handles: dict[str, list[str]] = {}
    for entry in source:
        # Agent sub-steps ("node#turn-1") and delays' start times go with their node: a node
        # that executes again starts afresh, a restored one does not need them.
        if entry.status != "completed" or "#" in entry.node_id or entry.node_id not in plan.nodes:
            continue
        if not entry.path:
            source_handles[entry.node_id] = list(entry.outcome.get("handles") or [])
        if entry.node_id in pinned or top_level_of(plan, entry.node_id) in executes:
            continue
        entries.append(
            NodeOutcome(
                entry.node_id,
                entry.path,
                SEEDED_KEY,
                "completed",
                entry.outcome,
                entry.attempts,
                started_at=entry.started_at,
                ended_at=entry.ended_at,
            )
        )
    for node_id, output in pinned.items():
        handles = source_handles.get(node_id) or _forward_handles(plan, node_id)
        entries.append(_seed(node_id, output, handles, now))
    return start, entries


def node_test_seed(plan: Plan, node_id: str, pinned: Mapping[str, Any], now: datetime) -> list[NodeOutcome]:
    """The journal of a run that executes only ``node_id`` (top-level)."""
    return [
        _seed(other, pinned.get(other), _forward_handles(plan, other), now)
        for other in plan.scopes[TOP].nodes
        if other != node_id
    ]
