"""The handler registry: every node type an installation knows.

Built-in families register themselves; plugins add handlers through the
``flowmaestro.node_handlers`` entry-point group (each entry point names a ``NodeHandler``
subclass, or a callable returning a list of handler instances). The registry is the
``NodeCatalog`` the compiler receives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from importlib.metadata import entry_points

from builder.catalog import NodeTypeSpec
from node_handlers.base import NodeHandler

ENTRY_POINT_GROUP = "flowmaestro.node_handlers"
log = logging.getLogger(__name__)


class HandlerRegistry:
    def __init__(self, handlers: Iterable[NodeHandler] = ()):
        self._handlers: dict[str, NodeHandler] = {}
        self._specs: dict[str, NodeTypeSpec] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: NodeHandler, *, replace: bool = False) -> None:
        if handler.type in self._handlers and not replace:
            raise ValueError(f"node type {handler.type!r} is already registered")
        self._handlers[handler.type] = handler
        self._specs[handler.type] = handler.spec()

    def handler(self, node_type: str) -> NodeHandler:
        return self._handlers[node_type]

    # NodeCatalog protocol
    def spec(self, node_type: str) -> NodeTypeSpec | None:
        return self._specs.get(node_type)

    def types(self) -> Iterable[str]:
        return sorted(self._handlers)


def builtin_handlers() -> list[NodeHandler]:
    from node_handlers import approval, branching, containers, core, http, llm, subworkflow, timing

    handlers: list[NodeHandler] = []
    for module in (core, branching, timing, containers, http, llm, approval, subworkflow):
        handlers += [cls() for cls in module.HANDLERS]
    return handlers


def load_plugins(registry: HandlerRegistry) -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            found = loaded() if not isinstance(loaded, type) else [loaded()]
            for handler in found if isinstance(found, list) else [found]:
                registry.register(handler, replace=True)
        except Exception as exc:  # a broken plugin must not take the installation down
            log.error("node handler plugin %s could not be loaded: %s", entry.name, exc)


@lru_cache(maxsize=1)
def default_registry() -> HandlerRegistry:
    registry = HandlerRegistry(builtin_handlers())
    load_plugins(registry)
    return registry
