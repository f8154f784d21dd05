"""The compiler's value between stages: what is known about a canvas so far."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from builder.canvas import CanvasHeader, EdgeModel, NodeModel
from builder.catalog import NodeConfig, NodeTypeSpec
from builder.issues import Issue


@dataclass(frozen=True)
class Draft:
    """Everything known about a canvas so far. Stages fill it in, never mutate it."""

    raw: Any
    issues: tuple[Issue, ...] = ()
    header: CanvasHeader | None = None
    nodes: Mapping[str, NodeModel] = field(default_factory=dict)
    edges: Mapping[str, EdgeModel] = field(default_factory=dict)
    specs: Mapping[str, NodeTypeSpec] = field(default_factory=dict)
    configs: Mapping[str, NodeConfig] = field(default_factory=dict)
    scope_of: Mapping[str, str] = field(default_factory=dict)
    handles: Mapping[str, str] = field(default_factory=dict)
    """Source handle of each valid edge; edges with problems are left out."""
    excluded: frozenset[str] = frozenset()
    """Nodes not reachable from ``start``: reported, not run."""
    levels: Mapping[str, int] = field(default_factory=dict)
    """Per scope, the longest edge count from a root; nodes on one cycle share a level."""
    components: Mapping[str, str] = field(default_factory=dict)
    """Nodes on a cycle: the smallest id of their cycle's strongly connected component."""
    references: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def add(self, *issues: Issue, **changes: Any) -> Draft:
        return replace(self, issues=self.issues + issues, **changes)
