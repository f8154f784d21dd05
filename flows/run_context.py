"""What a run of the generic flow is given, instead of reaching for process globals.

The entry point of a process builds one ``RunContext`` (the CLI per command, the API when it
starts, the deployment entry point ``flows.flow.run_workflow`` per worker run) and binds the
generic flow to it with ``flows.flow.workflow_flow``; child workflows run through the same
bound flow, so they share the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flows.event_log import EventLog, event_log_from_env
from flows.events import EventBus
from flows.settings import EngineSettings
from flows.subworkflows import WorkflowResolver, canvas_file_resolver
from node_handlers.registry import HandlerRegistry, default_registry

RunListener = Callable[[EventBus], None]
"""Called with a run's ``EventBus`` when the run starts, to subscribe to its events (the
CLI's progress view, the API's metrics)."""


@dataclass(frozen=True)
class RunContext:
    registry: HandlerRegistry
    event_log: EventLog
    """Where every run keeps its events; the context's builder closes it."""
    settings: EngineSettings
    resolve_workflow: WorkflowResolver = canvas_file_resolver
    """Finds the canvas a subworkflow node names."""
    listeners: tuple[RunListener, ...] = ()

    @classmethod
    def from_environment(cls, *, listeners: tuple[RunListener, ...] = ()) -> RunContext:
        """The context of a process configured by its environment (``FLOWMAESTRO_*``): the
        default handler registry, the event log and engine settings it names, canvas files
        as subworkflows."""
        return cls(registry=default_registry(), event_log=event_log_from_env(), settings=EngineSettings(),
                   listeners=listeners)
