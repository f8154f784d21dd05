"""The node catalog: what a canvas frontend needs to draw a palette and a form per node type.

Built from a handler registry (plugins included) and the very models the compiler
validates ``data`` with (``builder.schema.config_json_schema``), so that the catalog cannot
say something the compiler does not enforce. ``GET /api/node-types`` and ``flowmaestro
node-types`` publish it (docs/node-catalog.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.catalog import NodeTypeSpec
from builder.schema import JSON_SCHEMA_DIALECT, config_json_schema
from node_handlers.base import HandleDoc, NodeHandler
from node_handlers.registry import HandlerRegistry

CATEGORIES = ("core", "data", "logic", "ai", "integration", "human", "other")
"""The palette groups of the built-in types, in the order a palette shows them; a plugin
may name another."""


@dataclass(frozen=True)
class NodeTypeEntry:
    """One node type as the catalog describes it."""

    type: str
    label: str
    category: str
    description: str
    version: str
    container: str | None
    config_schema: dict[str, Any]
    handles: tuple[HandleDoc, ...]
    defaults: dict[str, Any]
    side_effects: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "label": self.label,
            "category": self.category,
            "description": self.description,
            "version": self.version,
            "container": self.container,
            "config_schema": self.config_schema,
            "handles": [
                {"id": h.id, "description": h.description, "dynamic_from": h.dynamic_from} for h in self.handles
            ],
            "defaults": self.defaults,
            "side_effects": self.side_effects,
        }


def node_defaults(spec: NodeTypeSpec) -> dict[str, Any]:
    """What a node of this type gets when it sets no ``retry``, ``timeout_s`` or ``cache`` of
    its own: the policies the compiler puts into the plan (``builder.compiler``)."""
    return {
        "retry": spec.default_retry.to_dict(),
        "timeout_s": None,  # no limit of the node's own unless it sets one
        "cache": {**spec.default_cache.to_dict(), "available": spec.cacheable},
    }


def describe(handler: NodeHandler, spec: NodeTypeSpec) -> NodeTypeEntry:
    schema = {"$schema": JSON_SCHEMA_DIALECT, **config_json_schema(spec)}
    return NodeTypeEntry(
        type=spec.type,
        label=handler.display_label,
        category=handler.category,
        description=spec.description,
        version=spec.version,
        container=spec.container,
        config_schema=schema,
        handles=handler.describe_handles(),
        defaults=node_defaults(spec),
        side_effects=handler.has_side_effects,
    )


class NodeTypeCatalog:
    """Every type of a registry described once (the schemas do not change while it lives)."""

    def __init__(self, registry: HandlerRegistry):
        entries = []
        for node_type in registry.types():
            spec = registry.spec(node_type)
            assert spec is not None  # types() lists registered types only
            entries.append(describe(registry.handler(node_type), spec))
        self._entries = {entry.type: entry for entry in entries}

    def entries(self) -> list[NodeTypeEntry]:
        """By palette group (``CATEGORIES`` first, in order; others after, by name), then type."""
        order = {name: index for index, name in enumerate(CATEGORIES)}
        return sorted(self._entries.values(), key=lambda e: (order.get(e.category, len(order)), e.category, e.type))

    def entry(self, node_type: str) -> NodeTypeEntry | None:
        return self._entries.get(node_type)
