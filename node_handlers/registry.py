"""The handler registry: every node type an installation knows.

Built-in families register themselves; plugins add handlers through the
``flowmaestro.node_handlers`` entry-point group (each entry point names a ``NodeHandler``
subclass, or a callable returning a list of handler instances). The registry is the
``NodeCatalog`` the compiler receives.

A registry is a value: each entry point (a worker's run context, the API, the CLI) builds
one with ``build_registry`` from its settings and passes it on; nothing keeps one for the
process, so tests build registries of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from builder.catalog import NodeTypeSpec
from node_handlers.base import NodeHandler
from node_handlers.settings import HandlerSettings

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


def builtin_handlers(settings: HandlerSettings | None = None) -> list[NodeHandler]:
    """The built-in handlers, with the installation's settings the compiler applies (the
    loop cap); ``settings``: read from the environment when not given."""
    from node_handlers import agent, approval, branching, code, containers, core, http, llm, subworkflow, timing

    settings = settings if settings is not None else HandlerSettings()
    handlers: list[NodeHandler] = []
    for module in (core, branching, timing, containers, http, llm, approval, subworkflow, code, agent):
        handlers += [
            containers.LoopHandler(settings.max_loop_iterations) if cls is containers.LoopHandler else cls()
            for cls in module.HANDLERS
        ]
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


def build_registry(settings: HandlerSettings | None = None) -> HandlerRegistry:
    """Every handler of the installation: the built-in ones and the plugins' (which may
    replace a built-in type). ``settings``: read from the environment when not given."""
    registry = HandlerRegistry(builtin_handlers(settings))
    load_plugins(registry)
    return registry
