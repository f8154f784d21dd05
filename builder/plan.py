"""The execution plan: an immutable, serializable value the engine runs.

A plan is what the compiler produces from a valid canvas. It carries, per node, its
type, resolved settings (retry, timeout, cache, join), its incoming and outgoing edges
with handles, and the container structure as scopes. ``Plan.hash`` is a content hash of
the canonical JSON form: the same canvas yields the same hash whatever its key or node
order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

NodeId = str
EdgeId = str
ScopeId = str  # "" is the top level; otherwise the container node's id

TOP: ScopeId = ""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_delay_s: float = 1.0
    backoff_factor: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.0
    retry_on: frozenset[str] = frozenset()

    def delays(self) -> tuple[float, ...]:
        """Delay before each retry (attempt 2, 3, ...), exponential and capped."""
        return tuple(
            min(self.initial_delay_s * self.backoff_factor**i, self.max_delay_s)
            for i in range(self.max_attempts - 1)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_delay_s": self.initial_delay_s,
            "backoff_factor": self.backoff_factor,
            "max_delay_s": self.max_delay_s,
            "jitter": self.jitter,
            "retry_on": sorted(self.retry_on),
        }


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool = False
    ttl_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "ttl_s": self.ttl_s}


@dataclass(frozen=True)
class EdgeConditionSpec:
    field: Any
    operator: str
    value: Any = None


@dataclass(frozen=True)
class PlanEdge:
    id: EdgeId
    source: NodeId
    target: NodeId
    handle: str = "source"
    condition: EdgeConditionSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        cond = self.condition
        return {
            "id": self.id,
            "source": self.source,
            "target": self.target,
            "handle": self.handle,
            "condition": None
            if cond is None
            else {"field": cond.field, "operator": cond.operator, "value": cond.value},
        }


@dataclass(frozen=True)
class PlanNode:
    id: NodeId
    type: str
    label: str
    scope: ScopeId
    """The container this node belongs to (``TOP`` for top-level nodes)."""
    data: Mapping[str, Any]
    """The node's configuration as written (templates unresolved). Read-only."""
    retry: RetryPolicy
    timeout_s: float | None
    cache: CachePolicy
    join: str
    handles: frozenset[str]
    incoming: tuple[EdgeId, ...]
    outgoing: tuple[EdgeId, ...]
    references: frozenset[NodeId]
    """Upstream nodes whose outputs this node's templates read."""
    level: int
    """Longest distance from a root of its scope; for display and ordering."""
    version: str = "1"
    container: str | None = None
    """``loop`` or ``parallel`` when this node is a container."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "label": self.label,
            "scope": self.scope,
            "data": dict(self.data),
            "retry": self.retry.to_dict(),
            "timeout_s": self.timeout_s,
            "cache": self.cache.to_dict(),
            "join": self.join,
            "handles": sorted(self.handles),
            "incoming": list(self.incoming),
            "outgoing": list(self.outgoing),
            "references": sorted(self.references),
            "level": self.level,
            "version": self.version,
            "container": self.container,
        }


@dataclass(frozen=True)
class Scope:
    """The nodes run together: the top level, or one container's body."""

    id: ScopeId
    nodes: tuple[NodeId, ...]
    roots: tuple[NodeId, ...]
    """Nodes without incoming edges: they start when the scope starts."""
    terminals: tuple[NodeId, ...]
    """Nodes without outgoing edges: their outputs make a body's result."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "nodes": list(self.nodes), "roots": list(self.roots),
                "terminals": list(self.terminals)}


@dataclass(frozen=True)
class Plan:
    name: str
    description: str | None
    inputs: Mapping[str, Mapping[str, Any]]
    variables: Mapping[str, Any]
    output: Any
    settings: Mapping[str, Any]
    nodes: Mapping[NodeId, PlanNode]
    edges: Mapping[EdgeId, PlanEdge]
    scopes: Mapping[ScopeId, Scope]
    hash: str = field(default="", compare=False)

    def node(self, node_id: NodeId) -> PlanNode:
        return self.nodes[node_id]

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-ready form; nodes, edges and scopes sorted by id."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": {k: dict(v) for k, v in sorted(self.inputs.items())},
            "variables": dict(self.variables),
            "output": self.output,
            "settings": dict(self.settings),
            "nodes": [self.nodes[k].to_dict() for k in sorted(self.nodes)],
            "edges": [self.edges[k].to_dict() for k in sorted(self.edges)],
            "scopes": [self.scopes[k].to_dict() for k in sorted(self.scopes)],
            "hash": self.hash,
        }


def content_hash(plan_dict: Mapping[str, Any]) -> str:
    body = {k: v for k, v in plan_dict.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def frozen_mapping(items: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(items))
