"""The handler contract.

A handler turns a node's resolved configuration into an outcome. It never knows about
edges or scheduling: it returns ``Completed`` with its output and the source handles it
selected, or raises ``NodeError`` saying whether and how the failure may be retried.
The engine decides what follows.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from builder.catalog import NodeConfig, NodeTypeSpec
from builder.plan import CachePolicy, RetryPolicy

if TYPE_CHECKING:  # services.py imports the egress policy, which imports this module
    from node_handlers.services import HandlerServices

SOURCE = frozenset({"source"})
SOURCE_AND_ERROR = frozenset({"source", "error"})


@dataclass(frozen=True)
class HandleDoc:
    """One source handle of a node type, as the node catalog describes it to a frontend."""

    id: str
    """The handle's id, or its shape when it is made from the node's data (``condition-<id>``)."""
    description: str
    dynamic_from: str | None = None
    """For a handle made from the node's data: where its ``<id>`` comes from
    (``data.conditions[].id``): one handle per item."""


SOURCE_HANDLE = HandleDoc("source", "Fires when the node completes.")
ERROR_HANDLE = HandleDoc(
    "error",
    "Fires when the node failed after its last attempt, with {error: {message, type, node_id, attempts}}; "
    "the run goes on along it instead of failing.",
)


@dataclass(frozen=True)
class Completed:
    """A node finished. ``handles`` are the source handles it selected."""

    output: Any
    handles: frozenset[str] = SOURCE
    variables: Mapping[str, Any] = field(default_factory=dict)
    """Workflow variables to set (``set_variable``)."""
    usage: Mapping[str, Any] | None = None
    """Token usage of LLM calls, summed per run by the engine."""


class NodeError(Exception):
    """A handler failed.

    ``retry_class`` names what kind of failure it is so a node's ``retry_on`` list can
    decide: ``timeout``, ``connection``, ``5xx``, ``429``, ``error`` (anything else worth
    retrying), or ``None`` for failures that retrying cannot fix (a 404, bad input).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_class: str | None = None,
        retry_after_s: float | None = None,
        error_type: str | None = None,
        details: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.retry_class = retry_class
        self.retry_after_s = retry_after_s
        self.error_type = error_type or type(self).__name__
        self.details = dict(details or {})


def retry_class_of(exc: BaseException) -> str | None:
    """Which ``retry_on`` class an exception belongs to."""
    if isinstance(exc, NodeError):
        return exc.retry_class
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection"
    return "error"


Emit = Callable[[str, Mapping[str, Any]], None]


class NodeCapabilities(Protocol):
    """What the engine does for a handler that needs the run itself, beyond its own call.
    Every handler gets them (``NodeContext.capabilities``); the engine binds them to the node
    execution (node, path, run), so a handler names only what it asks for.

    - ``pause_for_person``: wait for a person's decision through a form (an approval; an
      agent's tool approval). ``request`` is an ``ApprovalConfig`` (message, form,
      timeout_s, approvers); the run shows it paused meanwhile and may be released. Returns
      the decision as the approval node's ``Completed`` (handles approved, rejected, timeout).
    - ``start_child_run``: run another workflow as a child run (a sub-workflow); returns its
      output (and usage) once it completed, raises ``NodeError`` otherwise. ``step`` names
      the child among several of one node execution (an agent's tool calls), so that each
      keeps a journal of its own.
    - ``workflow_inputs``: the declared inputs of a workflow a child run would run (an
      agent's workflow tool describes its parameters with them).
    - ``journal_step``: a named sub-step whose result is written durably in the run's journal
      and, when the run executes again with the same node configuration, read back instead
      of computed (an agent's turns and tool calls). ``compute`` returns JSON-able data.

    Publishing an event of the node is ``NodeContext.emit``.
    """

    async def pause_for_person(self, request: Any) -> Completed: ...

    async def start_child_run(
        self, workflow: str, version: int | None, inputs: Mapping[str, Any], *, step: str | None = None
    ) -> Completed: ...

    async def workflow_inputs(self, workflow: str, version: int | None) -> Mapping[str, Any]: ...

    async def journal_step(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any: ...


class NoCapabilities:
    """Capabilities where no run is there to give them (a handler called on its own)."""

    async def pause_for_person(self, request: Any) -> Completed:
        raise NodeError(
            "approval nodes need a Prefect flow run to pause; run the workflow with 'flowmaestro run' or the API"
        )

    async def start_child_run(
        self, workflow: str, version: int | None, inputs: Mapping[str, Any], *, step: str | None = None
    ) -> Completed:
        raise NodeError("subworkflow nodes run only inside a Prefect flow run (flowmaestro run, or the API)")

    async def workflow_inputs(self, workflow: str, version: int | None) -> Mapping[str, Any]:
        raise NodeError("workflow tools run only inside a Prefect flow run (flowmaestro run, or the API)")

    async def journal_step(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        return await compute()  # no journal: nothing to read back


NO_CAPABILITIES = NoCapabilities()


@dataclass(frozen=True)
class NodeContext:
    """What a handler may know about where it runs."""

    node_id: str
    path: tuple[int, ...]
    run_id: str
    workflow: str
    attempt: int
    upstream: Mapping[str, Any]
    """Outputs of the nodes whose edges fired into this one, by node id."""
    inputs: Mapping[str, Any]
    emit: Emit
    """Publish an event of this node (``stream:chunk`` tokens, for instance)."""
    idempotency_key: str = ""
    """``<run id>:<node id>:<path>``, the same in every execution of the run (a child run's
    run id is its parent's journal id): what an ``http`` node sends as ``Idempotency-Key``."""
    owner: str | None = None
    """Whose run it is (the API key's owner of a saved workflow); None for a local run
    (``flowmaestro run``). Secrets are bound to owners (``node_handlers.operator_secrets``)."""
    workflow_id: str | None = None
    """The saved workflow's id; None for a canvas file run with ``flowmaestro run``."""
    first_started: datetime | None = None
    """For handlers that ``resumes_waiting``: when this node execution first started, in an
    earlier execution of the run if there was one (a delay then waits only what is left)."""
    release_until: Callable[[datetime], Awaitable[None]] = field(default=lambda until: _stays())
    """Let go of the run until ``until`` (a long delay): in a run of a deployment, when the wait
    is long enough and no other node of the run is executing, the worker's slot is freed and
    the run comes back then (scheduled, on any worker, replayed from its journal). It then
    raises the runner's release signal, which the handler must let through (it is not an
    ``Exception``); otherwise it returns and the handler waits itself."""
    capabilities: NodeCapabilities = NO_CAPABILITIES
    """What the engine does for the handler: pause for a person, start a child run, journal
    a sub-step (``NodeCapabilities``)."""
    services: HandlerServices | None = None
    """What handlers that talk to the outside share in the process (settings, egress policy,
    pooled clients: ``node_handlers.services``), from the run's context; None when a handler
    is called on its own (then the environment's)."""


def _handle_order(handle: str) -> tuple[bool, bool, str]:
    """source first, error last, the rest by name."""
    return handle == "error", handle != "source", handle


async def _stays() -> None:
    """The default ``release_until``: the run is never let go of."""


class NodeHandler:
    """Base class of handlers. Subclasses set the class attributes and ``run``."""

    type: ClassVar[str]
    version: ClassVar[str] = "1"
    label: ClassVar[str] = ""
    """What a palette shows; the type in words (``set_variable``: "Set variable") when empty."""
    category: ClassVar[str] = "other"
    """The palette group: core, data, logic, ai, integration, human, or other (docs/node-catalog.md)."""
    description: ClassVar[str] = ""
    side_effects: ClassVar[bool | None] = None
    """True when running the node does more than compute its output (it calls a service,
    changes the run, waits on a person or the clock): running it twice is not harmless.
    None: decided from the other attributes (``has_side_effects``)."""
    handle_docs: ClassVar[tuple[HandleDoc, ...] | None] = None
    """The source handles described for the node catalog; None: read from ``handles``."""
    Config: ClassVar[builtins.type[NodeConfig]] = NodeConfig  # `type` above is an attribute
    default_retry: ClassVar[RetryPolicy] = RetryPolicy()
    default_cache: ClassVar[CachePolicy] = CachePolicy()
    cacheable: ClassVar[bool] = True
    expression_keys: ClassVar[frozenset[str]] = frozenset()
    own_scope_keys: ClassVar[frozenset[str]] = frozenset()
    literal_keys: ClassVar[frozenset[str]] = frozenset()
    """Keys of ``data`` taken as written, never rendered as templates (a code node's ``code``)."""
    container: ClassVar[str | None] = None
    terminal: ClassVar[bool] = False
    control: ClassVar[bool] = False
    """Pure, fast, side-effect free: computed again rather than journaled durably when a
    run is executed again, and run inline (``inline_safe``)."""
    inline: ClassVar[bool] = False
    """No side effect (it computes or only waits), so it needs no retry, cache or task of its
    own: the engine may run it inside the flow run instead of as a full Prefect task run,
    recording it as a task run all the same (docs/engine.md). Control nodes always are;
    a plugin sets this for a handler that only waits or computes."""
    resumes_waiting: ClassVar[bool] = False
    """It waits (a delay): the run's journal keeps when it first started, so a run executed
    again after a crash gives it ``NodeContext.first_started`` and it waits only what is left."""
    reads_upstream: ClassVar[bool] = False
    """The output depends on upstream outputs directly (merge), so they enter the cache key."""
    in_flow: ClassVar[bool] = False
    """It uses the run itself (``NodeContext.capabilities``: it pauses the run for a person,
    starts a child run): the engine calls it once, in the flow, not as a task run, without
    the runner's retries and timeout (which would repeat or cut short a person's wait or a
    child run)."""

    @property
    def inline_safe(self) -> bool:
        return self.control or self.inline

    @property
    def display_label(self) -> str:
        return self.label or self.type.replace("_", " ").replace("-", " ").capitalize()

    @property
    def has_side_effects(self) -> bool:
        """``side_effects`` when the handler says; otherwise only a pure control node, whose
        results may be cached, has none (a handler that says nothing is assumed to act)."""
        if self.side_effects is not None:
            return self.side_effects
        return not (self.control and self.cacheable)

    def describe_handles(self) -> tuple[HandleDoc, ...]:
        """``handle_docs``, or the handles ``handles`` gives for the configuration's defaults
        (source and error unless overridden), described; a handler whose handles depend on
        data it does not describe gets one entry saying so."""
        if self.handle_docs is not None:
            return self.handle_docs
        known = {SOURCE_HANDLE.id: SOURCE_HANDLE, ERROR_HANDLE.id: ERROR_HANDLE}
        try:
            ids = self.handles(self.Config.model_construct())
        except Exception:  # handles read data the defaults do not give: say so rather than guess
            return (HandleDoc("<dynamic>", "Handles depend on the node's data; see its description.", "data"),)
        return tuple(
            known.get(i) or HandleDoc(i, f"Fires when the node selects {i!r}.") for i in sorted(ids, key=_handle_order)
        )

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return SOURCE_AND_ERROR

    async def run(self, config: Any, ctx: NodeContext) -> Completed:
        raise NodeError(f"{self.type} nodes cannot run in this version of FlowMaestro")

    def spec(self) -> NodeTypeSpec:
        return NodeTypeSpec(
            type=self.type,
            config_model=self.Config,
            handles=self.handles,
            version=self.version,
            description=self.description,
            container=self.container,  # type: ignore[arg-type]
            default_retry=self.default_retry,
            default_cache=self.default_cache,
            cacheable=self.cacheable,
            expression_keys=self.expression_keys,
            own_scope_keys=self.own_scope_keys,
            literal_keys=self.literal_keys,
            terminal=self.terminal,
        )
