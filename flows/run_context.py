"""What a run of the generic flow is given, instead of reaching for process globals.

The entry point of a process builds one ``RunContext`` (the CLI per command, the API when it
starts, the deployment entry point ``flows.flow.run_workflow`` per worker run) and binds the
generic flow to it with ``flows.flow.workflow_flow``; child workflows run through the same
bound flow, so they share the context.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect import Task

from builder.plan_cache import PlanCache
from flows.event_log import EventLog, event_log_from_env
from flows.events import EventBus
from flows.journal import OutcomeStore
from flows.node_limits import NodeLimiter, PrefectNodeLimits
from flows.observing import Observability
from flows.prefect_compat import TaskRunSender
from flows.prefect_runner import cache_lock_manager, cached_task
from flows.settings import EngineSettings
from flows.subworkflows import WorkflowResolver, canvas_file_resolver
from node_handlers.registry import HandlerRegistry, build_registry
from node_handlers.services import HandlerServices

RunListener = Callable[[EventBus], None]
"""Called with a run's ``EventBus`` when the run starts, to subscribe to its events (the
CLI's progress view, the API's metrics)."""


@dataclass(frozen=True)
class SavedCanvas:
    """A saved workflow version, as a run loads it."""

    workflow_id: str
    name: str
    version: int
    canvas: dict[str, Any]
    status: str = "active"
    """The workflow's: ``draft`` or ``archived`` refuse some new runs (``store.workflow_meta``)."""


class RunStore(OutcomeStore, Protocol):
    """FlowMaestro's records, as runs of saved workflows use them (``deployments.run_store``):
    a run names its workflow and loads the canvas, says it started, keeps its journal
    (``flows.journal``), stores its result."""

    async def load(self, owner: str, workflow_id: str, version: int | None) -> SavedCanvas:
        """The version (the latest when None); ``LookupError`` when there is none."""
        ...

    async def started(
        self,
        run_id: str,
        *,
        owner: str,
        workflow_id: str,
        version: int,
        name: str,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        flow_run_id: str | None = None,
    ) -> bool:
        """The run is recorded running; False when it ended through the API before it
        started (this flow run must not run it)."""
        ...

    async def ended(self, run_id: str, result: dict[str, Any]) -> None: ...

    async def keep_output(self, run_id: str, ref: str, content: bytes) -> None:
        """Keep a node output too large for events (``flows.large_outputs``), as JSON."""


class CancelSignals:
    """Cancellation requests for the runs of this process, set by whoever watches Prefect
    for all of them (the worker reads all its runs' states at once); without one, each run
    polls its own state."""

    def __init__(
        self, *, on_watch: Callable[[str], None] | None = None, on_holding: Callable[[str, bool], None] | None = None
    ) -> None:
        """``on_watch``: called with each run that starts being watched (the worker's first
        heartbeat for it). ``on_holding``: told when a run is about to let go of its worker
        (False: suspended, the worker stops its heartbeats first) or keeps it after all (True)."""
        self._events: dict[str, asyncio.Event] = {}
        self._pauses: dict[str, asyncio.Event] = {}
        self._handed_back: set[str] = set()
        self.on_watch = on_watch
        self.on_holding = on_holding

    def holding(self, run_id: str, held: bool) -> None:
        if self.on_holding is not None:
            self.on_holding(run_id, held)

    def watch(self, run_id: str) -> asyncio.Event:
        if run_id not in self._events and self.on_watch is not None:
            self.on_watch(run_id)
        return self._events.setdefault(run_id, asyncio.Event())

    def watched(self) -> list[str]:
        """The runs of this process executing now, children of sub-workflow nodes included."""
        return list(self._events)

    def pause_event(self, run_id: str) -> asyncio.Event:
        """Set when the run was asked to pause (``flows.pauses``)."""
        return self._pauses.setdefault(run_id, asyncio.Event())

    def pause(self, run_id: str) -> None:
        event = self._pauses.get(run_id)
        if event is not None:
            event.set()

    def forget(self, run_id: str) -> None:
        self._events.pop(run_id, None)
        self._pauses.pop(run_id, None)
        self._handed_back.discard(run_id)

    def cancel(self, run_id: str) -> None:
        event = self._events.get(run_id)
        if event is not None:
            event.set()

    def hand_back(self, run_id: str) -> None:
        """Stop the run as ``cancel`` does, but to be continued by another worker: its flow
        puts it back in the pool's queue instead of ending it (a worker's drain)."""
        self._handed_back.add(run_id)
        self.cancel(run_id)

    def handing_back(self, run_id: str) -> bool:
        return run_id in self._handed_back


@dataclass(frozen=True)
class RunContext:
    registry: HandlerRegistry
    event_log: EventLog
    """Where every run keeps its events; the context's builder closes it."""
    settings: EngineSettings
    resolve_workflow: WorkflowResolver = canvas_file_resolver
    """Finds the canvas a subworkflow node names."""
    listeners: tuple[RunListener, ...] = ()
    store: RunStore | None = None
    """Where runs of saved workflows load their canvas and record themselves (workers)."""
    cancellations: CancelSignals | None = field(default=None, compare=False)
    """Cancellation requests delivered by the process (workers); None: each run polls."""
    cached_task: Task | None = field(default=None, compare=False)
    """The Prefect task of nodes with caching on, with this process's cache lock manager."""
    task_run_sender: TaskRunSender | None = field(default=None, compare=False)
    """Sends what runs record in Prefect (inline task runs, node logs) for all of them, after
    they have ended if need be; None: each run sends its own before it ends."""
    environ: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The process's environment as runs see it: what templates read as ``env.NAME`` (those
    of ``settings.env_allowlist``), and the values the journal redacts."""
    services: HandlerServices | None = field(default=None, compare=False)
    """What http and llm nodes share (settings, egress policy, pooled clients), handed to
    every node; closed with the context."""
    plans: PlanCache | None = field(default=None, compare=False)
    """Plans of saved versions, compiled once per ``(workflow_id, version)`` (a worker);
    None: every run compiles its canvas."""
    observability: Observability | None = field(default=None, compare=False)
    """Traces (the ``OTEL_*`` variables) and metrics (a worker's) of the runs; closed with
    the context. None: neither."""
    node_limits: NodeLimiter = field(default_factory=PrefectNodeLimits, compare=False)
    """Where nodes' ``concurrency`` and ``rate_limit`` slots are taken (Prefect's global
    concurrency limits, ``flows.node_limits``), shared by the process's runs."""

    @classmethod
    def from_environment(cls, *, listeners: tuple[RunListener, ...] = ()) -> RunContext:
        """The context of a process configured by its environment (``FLOWMAESTRO_*``): the
        handler registry of its handler settings (plugins included), the event log and engine
        settings it names, canvas files as subworkflows."""
        settings = EngineSettings()
        services = HandlerServices.from_environment()
        return cls(
            registry=build_registry(services.settings),
            event_log=event_log_from_env(),
            settings=settings,
            listeners=listeners,
            cached_task=cached_task(cache_lock_manager(settings)),
            task_run_sender=TaskRunSender(),
            environ=os.environ,
            services=services,
            observability=Observability.from_environment(os.environ),
        )

    async def close(self) -> None:
        """Send what runs recorded in Prefect, close the event log and the clients of http
        and llm nodes (their connections close cleanly before the event loop ends): the
        builder of a context calls it when the process is done with it."""
        if self.task_run_sender is not None:
            await self.task_run_sender.close()
        await self.event_log.close()
        if self.services is not None:
            await self.services.close()
        if self.observability is not None:
            await self.observability.close()
