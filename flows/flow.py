"""The one generic Prefect flow that runs any canvas.

It compiles the canvas it is given (so the flow run's parameters show exactly what ran),
checks the inputs before anything runs, executes the plan with every node as a task run,
watches for cancellation, and returns the run result of the canvas spec (section 9).
A failed or cancelled run ends in that Prefect state and still carries the run result.

A run gets everything it uses from its ``RunContext`` (flows/run_context.py). Two doors:

- ``workflow_flow(context)``: the flow bound to a context its caller built, for runs in the
  caller's process (``flowmaestro run``; FlowMaestro's worker, for all its runs);
- ``run_workflow``: the module-level flow, the entry point of deployments
  (``flows/flow.py:run_workflow``), which a worker process imports: each run builds its
  context from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Failed

from builder.compiler import compile_canvas
from builder.inputs import checked_inputs
from builder.issues import InputsInvalid
from builder.plan import Plan
from flows import prefect_compat
from flows.approvals import PrefectApprovals
from flows.decisions import DecisionSigner
from flows.engine import Execution
from flows.event_log import EventLogWriter
from flows.events import FINAL_EVENT_TYPES, EventBus, utcnow
from flows.journal import RunJournal
from flows.large_outputs import LargeOutputs
from flows.observing import NO_OBSERVER, NoObserver, RunFacts, RunObserver, start_delay_of
from flows.pauses import PauseGate, is_pause_requested
from flows.prefect_runner import PrefectRunner
from flows.records import RunRecord
from flows.releases import DelayRelease
from flows.run_context import CancelSignals, RunContext, RunStore
from flows.subworkflows import ChildFlow, PrefectSubworkflows, tag_run_with_workflow
from flows.tracing import TRACEPARENT_LABEL, valid_traceparent
from node_handlers.credentials import missing_credentials
from node_handlers.services import HandlerServices
from store import workflow_meta
from store.errors import Unavailable
from store.vocabulary import EventType, NodeStatus, RunStatus

FLOW_NAME = "flowmaestro"


def _generic_flow(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Flow:
    """The Prefect options of the generic flow, the same for every door. No ``flow_run_name``:
    Prefect would look up the server's default result storage once more per run (about
    40 ms) to call it; the run names itself (``_name_after_canvas``)."""
    # The run result is not persisted in Prefect's result storage: the store keeps it, and a
    # file there holding node outputs verbatim is one a forged state could point Prefect's
    # reader at. Callers in this process read the state's in-memory result
    # (``prefect_compat.run_result``); should a result ever be persisted, it is plain JSON.
    return flow(
        name=FLOW_NAME,
        persist_result=False,
        validate_parameters=False,
        result_serializer=prefect_compat.RESULT_SERIALIZER,
    )(fn)


async def _name_after_canvas(flow_context: FlowRunContext | None, canvas: Any) -> None:
    """A run given a canvas is named after it; a run of a saved workflow keeps the name it
    was created with (the API names it after the workflow)."""
    name = canvas.get("name") if isinstance(canvas, dict) else None
    if (
        flow_context is None
        or flow_context.flow_run is None
        or not isinstance(name, str)
        or not name
        or flow_context.flow_run.name == name
    ):
        return
    await flow_context.client.set_flow_run_name(flow_context.flow_run.id, name)
    flow_context.flow_run.name = name


def workflow_flow(context: RunContext) -> Flow:
    """The generic flow bound to ``context``: call it as ``await bound(canvas=..., inputs=...,
    return_state=True)``. Child workflows run through it too, so they share the context."""

    async def run_workflow(
        canvas: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        workflow_id: str | None = None,
        version: int | None = None,
        owner: str | None = None,
        trigger: dict[str, Any] | None = None,
        depth: int = 0,
        journal: str | None = None,
        started_at: str | None = None,
        breakpoints: list[str] | None = None,
        execution_id: str | None = None,
    ) -> Any:
        """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs: the ``canvas``
        given, or version ``version`` (the latest when empty) of the saved workflow
        ``workflow_id`` of ``owner``. ``depth``: how deep a sub-workflow run is nested;
        ``journal``: where a child run keeps what it completed (the flow run id otherwise);
        ``started_at``: a child run's ``run.started_at``, its parent's first start;
        ``execution_id``: the run's id as the API accepted it (its flow run id otherwise)."""
        return await _run_in_flow(
            context,
            bound,
            RunRequest(
                canvas,
                dict(inputs or {}),
                workflow_id,
                version,
                owner,
                trigger,
                depth,
                journal,
                started_at,
                tuple(breakpoints or ()),
                execution_id,
            ),
        )

    bound = _generic_flow(run_workflow)
    return bound


@_generic_flow
async def run_workflow(
    canvas: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    workflow_id: str | None = None,
    version: int | None = None,
    owner: str | None = None,
    trigger: dict[str, Any] | None = None,
    depth: int = 0,
    journal: str | None = None,
    started_at: str | None = None,
    breakpoints: list[str] | None = None,
    execution_id: str | None = None,
) -> Any:
    """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs."""
    # An entry point for processes that run one flow run (Prefect's own workers): the
    # context is built from the environment for this run. FlowMaestro's worker
    # (deployments/worker.py) binds the flow to one context for all its runs instead.
    context = RunContext.from_environment()
    try:
        return await _run_in_flow(
            context,
            workflow_flow(context),
            RunRequest(
                canvas,
                dict(inputs or {}),
                workflow_id,
                version,
                owner,
                trigger,
                depth,
                journal,
                started_at,
                tuple(breakpoints or ()),
                execution_id,
            ),
        )
    finally:
        await context.close()


# --- the run's phases ------------------------------------------------------------------------------
#
# As Prefect's own FlowRunEngine names its steps (initialize_run, begin_run, call_flow_fn,
# handle_success/handle_crash), a run goes through four, each a function below:
#
#   open_run     who the run is and where what it does goes (event bus, event log writer,
#                Prefect recorder); closed when the run is over, whatever happens
#   prepare_run  everything decided before a node runs: the saved version, the crash count,
#                the execution row, the plan, the inputs, the journal; or the run is refused
#   execute_run  the plan runs (``Execution``), watching for cancellation
#   finish_run   the result stored, the final event released, the summary sent, the
#                Prefect state the flow ends in


@dataclass(frozen=True)
class RunRequest:
    """What a flow run was asked to run: the generic flow's parameters."""

    canvas: dict[str, Any] | None
    inputs: dict[str, Any]
    workflow_id: str | None
    version: int | None
    owner: str | None
    trigger: dict[str, Any] | None
    depth: int = 0
    journal_id: str | None = None
    started_at: str | None = None
    """Given to a child run by its parent: the parent's first start."""
    breakpoints: tuple[str, ...] = ()
    """Nodes the run pauses before (``flows.pauses``)."""
    execution_id: str | None = None
    """The run's id as the API accepted it (``api.outbox``): its id everywhere (events,
    journal, store rows). A run started elsewhere (a schedule, the Prefect UI, a parent) has
    none and is known by its flow run id."""

    @property
    def name(self) -> str:
        name = self.canvas.get("name") if isinstance(self.canvas, dict) else None
        return name if isinstance(name, str) and name else "workflow"


@dataclass(frozen=True)
class OpenedRun:
    """Who the run is and where what it does goes (``open_run``)."""

    context: RunContext
    request: RunRequest
    run_id: str
    """The execution id: what the run's events, journal and store rows are keyed by."""
    flow_run: Any
    """Prefect's ``FlowRun``; None outside a flow run."""
    started_at: datetime
    """The run's first start (``first_start``): its ``run.started_at`` in every execution."""
    store: RunStore | None
    """The store, for a run of a saved workflow (the ones Prefect can execute again)."""
    bus: EventBus
    writer: EventLogWriter
    recorder: prefect_compat.TaskRunRecorder | None
    observer: RunObserver | NoObserver = NO_OBSERVER
    """Its span and metrics (``flows.observing``), when the process traces or counts runs."""
    flow_run_id: str = "local"
    """What Prefect knows the run by (approvals, pauses, releases, cancellation): its flow
    run id, the same as ``run_id`` unless the API accepted the run under an id of its own."""


@dataclass(frozen=True)
class PreparedRun:
    """Everything the run's execution needs, settled before any node runs (``prepare_run``)."""

    opened: OpenedRun
    plan: Plan
    version: int | None
    inputs: Mapping[str, Any]
    """Checked against the plan's declared inputs, defaults filled in."""
    journal: RunJournal
    subworkflows: PrefectSubworkflows


@dataclass(frozen=True)
class Refusal:
    """A run that ends before anything ran: refused (failed), or cancelled through the API
    before it started; ``recorded``: whether its execution row takes the result (not for a
    workflow that is gone, nor for a run cancelled already)."""

    record: RunRecord
    recorded: bool = True


class HandedBack(Exception):
    """The run's worker stopped it to hand it back (its drain at SIGTERM ran out of grace)."""


async def _run_in_flow(context: RunContext, child_flow: ChildFlow, request: RunRequest) -> Any:
    async with open_run(context, request) as opened:
        prepared = await prepare_run(opened, child_flow)
        if isinstance(prepared, Refusal):
            return await finish_run(opened, prepared.record, ran=False, recorded=prepared.recorded)
        try:
            record = await execute_run(prepared)
        except HandedBack:
            await _hand_back(opened)
        return await finish_run(opened, record, ran=True)


async def _hand_back(opened: OpenedRun) -> NoReturn:
    """Put a run its worker stopped back in the pool's queue: not ended (its cancelled final
    event is dropped, nothing is recorded), Scheduled now for any other worker, which
    continues it from its journal. Raises Prefect's ``Pause``, as a release does."""
    opened.writer.drop_final()
    signals = opened.context.cancellations
    assert signals is not None
    get_run_logger().info("run %s: handed back to the work pool by its stopping worker", opened.run_id)
    async with get_client() as client:
        await prefect_compat.hand_back_flow_run(
            client,
            uuid.UUID(opened.flow_run_id),
            holding=functools.partial(signals.holding, opened.flow_run_id),
            message="handed back by its worker, stopping (SIGTERM): any worker of the pool continues it",
        )


@contextlib.asynccontextmanager
async def open_run(context: RunContext, request: RunRequest) -> AsyncIterator[OpenedRun]:
    """The run's identity, its event bus (numbering continues from the event log), the
    listeners subscribed, the writer to the event log and the recorder of inline task runs;
    the writer and the recorder are closed when the run is over."""
    flow_context = FlowRunContext.get()
    flow_run = flow_context.flow_run if flow_context else None
    flow_run_id = str(flow_run.id) if flow_run else "local"
    run_id = request.execution_id if request.execution_id and flow_run else flow_run_id
    await _name_after_canvas(flow_context, request.canvas)
    # A run executed again (a Prefect retry, elsewhere) continues its event numbering.
    start_seq = await context.event_log.last_seq(run_id) if run_id != "local" else 0
    bus = EventBus(run_id, start_seq=start_seq)
    for listener in context.listeners:
        listener(bus)
    saved = context.store is not None and request.workflow_id is not None and request.owner is not None
    if saved:
        assert request.workflow_id is not None
        await tag_run_with_workflow(flow_context, request.workflow_id)  # a child run's tag (its parent's call has none)
    # Every run keeps its events in the event log, wherever it executes. For a saved workflow
    # the final event waits until the result is stored: a client that sees the run end reads
    # its result.
    writer = EventLogWriter(context.event_log, hold_final=saved)
    writer.attach(bus)
    observer = observed_run(context, request, run_id, flow_run)
    if observer is not NO_OBSERVER:
        bus.subscribe(observer.event)
    if start_seq and await _ended_before(context, run_id, start_seq):
        # Executed again after its final event without the API's retry saying so (the
        # Prefect UI's Retry button): say it here, or streams would end at that final event.
        bus.publish(EventType.EXECUTION_RETRIED, status=RunStatus.PENDING, retried_by="prefect-ui")
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(observer.close)  # the run's span ends last
        stack.push_async_callback(writer.close)
        # Closed first: what it has not sent yet goes before the run ends.
        recorder = await stack.enter_async_context(
            prefect_compat.task_run_recorder(context.task_run_sender, logs=context.settings.node_logs)
        )
        yield OpenedRun(
            context=context,
            request=request,
            run_id=run_id,
            flow_run=flow_run,
            flow_run_id=flow_run_id,
            started_at=first_start(flow_run, request.started_at),
            store=context.store if saved else None,
            bus=bus,
            writer=writer,
            recorder=recorder,
            observer=observer,
        )


def observed_run(context: RunContext, request: RunRequest, run_id: str, flow_run: Any) -> RunObserver | NoObserver:
    """The run's observer (``flows.observing``): its span under the request's ``traceparent``
    (a label of its flow run) or its sub-workflow node's, its metrics."""
    if context.observability is None or not context.observability.active:
        return NO_OBSERVER
    labels = (getattr(flow_run, "labels", None) or {}) if flow_run is not None else {}
    trigger = request.trigger.get("type") if isinstance(request.trigger, dict) else None
    facts = RunFacts(
        run_id=run_id,
        workflow=request.name if request.canvas is not None or flow_run is None else str(flow_run.name),
        workflow_id=request.workflow_id,
        version=request.version,
        trigger=str(trigger) if trigger else None,
        traceparent=valid_traceparent(labels.get(TRACEPARENT_LABEL)),
        start_delay_s=start_delay_of(flow_run) if request.depth == 0 else None,
    )
    return context.observability.run(facts)


async def _ended_before(context: RunContext, run_id: str, last_seq: int) -> bool:
    """Whether the run's last stored event is a final one: an earlier execution ended there."""
    last = await context.event_log.read(run_id, after=last_seq - 1, limit=1)
    return bool(last) and last[0].type in FINAL_EVENT_TYPES


def first_start(flow_run: Any, given: str | None) -> datetime:
    """When the run first started: what templates read as ``run.started_at``. The same in
    every execution of the run (after a crash, a release, a retry), so that a node using it
    keeps its key and is restored from the journal rather than executed again: Prefect sets a
    flow run's ``start_time`` once, when it first runs (before, the Running state just
    entered is that time). A child run is given its parent's (a parent executed again starts
    a new child flow run); a run outside a flow run started now."""
    if given:
        return datetime.fromisoformat(given)
    if flow_run is not None:
        if flow_run.start_time is not None:
            return flow_run.start_time
        state = flow_run.state
        if state is not None and state.type == StateType.RUNNING:
            return state.timestamp
    return utcnow()


async def prepare_run(opened: OpenedRun, child_flow: ChildFlow) -> PreparedRun | Refusal:
    """Everything decided before a node runs: for a saved workflow, its version loaded, the
    crash count checked and the execution recorded as running; the plan (compiled once per
    saved version by a process that keeps plans); the inputs checked; the journal opened.
    A refusal when any of these says the run cannot go on."""
    context, request, store = opened.context, opened.request, opened.store
    canvas, version, name = request.canvas or {}, request.version, request.name
    if store is not None:
        assert request.workflow_id is not None and request.owner is not None
        try:
            found = await store.load(request.owner, request.workflow_id, request.version)
        except LookupError as exc:
            return Refusal(
                _refused(opened, name, "workflow not found", [{"message": str(exc), "code": "workflow_not_found"}]),
                recorded=False,
            )
        canvas, version, name = found.canvas, found.version, found.name
        flow_run = opened.flow_run
        trigger = request.trigger or _trigger_of(flow_run)
        crashes = await _crashes(opened.flow_run_id) if flow_run is not None and flow_run.run_count > 1 else 0
        if crashes > context.settings.crash_retries:
            times = f"{crashes} time{'s' if crashes > 1 else ''}"
            return Refusal(
                _refused(
                    opened,
                    name,
                    "crashed too often",
                    [
                        {
                            "message": f"its worker died {times} (FLOWMAESTRO_CRASH_RETRIES="
                            f"{context.settings.crash_retries}); retry it when the cause is fixed",
                            "code": "crash_retries_exhausted",
                        }
                    ],
                )
            )
        started = await store.started(
            opened.run_id,
            owner=request.owner,
            workflow_id=request.workflow_id,
            version=found.version,
            name=found.name,
            inputs=dict(request.inputs),
            trigger=trigger,
            flow_run_id=opened.flow_run_id,
        )
        if not started:  # ended through the API before it knew this flow run: left as it is
            cancelled = RunRecord.cancelled_before_start(
                opened.run_id, found.name, workflow_id=request.workflow_id, version=found.version
            )
            return Refusal(cancelled, recorded=False)
        # A new run the API did not start (the Prefect UI's Run, a schedule's run made before
        # the workflow was archived) meets the status rules here; a run executed again goes on.
        refused = workflow_meta.refusal(request.workflow_id, found.status, str(trigger.get("type", "api")))
        if refused is not None and (flow_run is None or flow_run.run_count <= 1):
            return Refusal(_refused(opened, name, f"workflow {found.status}", refused.issues, found.version))
    compiled = _compile(context, canvas, (request.workflow_id, version) if store is not None else None)
    if isinstance(compiled, list):
        return Refusal(_refused(opened, name, "invalid canvas", compiled, version))
    inputs = checked_inputs(compiled, request.inputs)
    if isinstance(inputs, InputsInvalid):
        return Refusal(_refused(opened, name, "invalid inputs", [i.to_dict() for i in inputs.issues], version))
    # Only saved runs keep their journal: they are the ones Prefect can run again.
    journal = await RunJournal.open(
        request.journal_id or opened.run_id,
        store,
        workflow_id=request.workflow_id,
        owner=request.owner,
        secrets=[context.environ.get(n, "") for n in context.settings.env_allowlist],
        execution_id=opened.run_id,
    )
    if store is not None and not journal.entries and context.services is not None:
        # A new run (schedule, webhook, Prefect UI...) naming a credential its owner lacks
        # fails at once, naming it; a run executed again fails at the node instead.
        refusal = await _missing_credentials(opened, context.services, canvas, name, version)
        if refusal is not None:
            return refusal
    # A child is given this run's first start: its ``run.started_at`` too.
    children = functools.partial(child_flow, started_at=opened.started_at.isoformat())
    subworkflows = PrefectSubworkflows(
        context.resolve_workflow,
        children,
        request.owner,
        by_reference=store is not None,
        depth=request.depth,
        max_depth=context.settings.max_subworkflow_depth,
    )
    return PreparedRun(
        opened=opened, plan=compiled, version=version, inputs=inputs, journal=journal, subworkflows=subworkflows
    )


async def _missing_credentials(
    opened: OpenedRun, services: HandlerServices, canvas: dict[str, Any], name: str, version: int | None
) -> Refusal | None:
    reader, owner = services.credentials, opened.request.owner
    if reader is None or owner is None:
        return None
    try:
        issues = await missing_credentials(reader, owner, canvas)
    except Unavailable:  # the nodes read them again, and fail (and retry) on their own
        return None
    return Refusal(_refused(opened, name, "missing credentials", issues, version)) if issues else None


def _compile(context: RunContext, canvas: dict[str, Any], saved_as: tuple[Any, Any] | None) -> Plan | list[dict]:
    """The plan of ``canvas``, or its issues. A saved version (``saved_as``: workflow id and
    version) is compiled once by a context that keeps plans (a worker): versions never
    change. A canvas given inline is compiled every time."""
    key = saved_as if saved_as is not None and None not in saved_as else None
    cached = context.plans.get(key) if context.plans is not None and key is not None else None
    if cached is not None:
        return cached
    # The caps the API applies, without its time budget: a busy worker must not refuse a
    # saved version for being slow, and the caps bound its work already.
    compiled = compile_canvas(canvas, context.registry, context.settings.compile_limits(timed=False))
    if not compiled.ok:
        return [issue.to_dict() for issue in compiled.errors]
    assert compiled.plan is not None
    if context.plans is not None and key is not None:
        context.plans.put(key, compiled.plan)
    return compiled.plan


def _refused(
    opened: OpenedRun, name: str, what: str, issues: list[dict[str, Any]], version: int | None = None
) -> RunRecord:
    return RunRecord.refused(opened.run_id, name, what, issues, workflow_id=opened.request.workflow_id, version=version)


async def execute_run(prepared: PreparedRun) -> RunRecord:
    """Run the plan: the ``Execution`` with the collaborators of this run (approvals, a
    delay's release, sub-workflows, the journal), watching for cancellation; the journal
    flushed whatever happens."""
    opened = prepared.opened
    context, request, run_id = opened.context, opened.request, opened.run_id
    flow_run_id = opened.flow_run_id  # what Prefect knows it by: approvals, pauses, cancels
    settings = context.settings
    # A worker lets go of a run of a deployment that waits long for a person or on a delay
    # (the run replays from its journal when answered or due); other runs have nobody to
    # replay them.
    releasable = opened.store is not None and opened.flow_run is not None and opened.flow_run.deployment_id is not None
    signals = context.cancellations
    holding = functools.partial(signals.holding, flow_run_id) if signals is not None else _holds_anyway
    execution: Execution
    approvals = PrefectApprovals(
        flow_run_id,
        hold_s=settings.approval_hold_s if releasable else None,
        holding=holding,
        signer=DecisionSigner.from_settings(settings.decision_key, settings.secret_key, settings.home),
        allow_unverified=settings.approval_prefect_ui,
        # The two need each other: an approval is not released while
        # another node of the execution runs.
        busy=lambda: execution.leaf_running(),
    )
    release = _delay_release(flow_run_id, settings.delay_release_s, holding) if releasable else None
    execution = Execution(
        prepared.plan,
        context.registry,
        run_id=run_id,
        inputs=prepared.inputs,
        runner=PrefectRunner(recorder=opened.recorder, cached=context.cached_task),
        bus=opened.bus,
        env=context.environ,
        env_allowlist=settings.env_allowlist,
        workflow_id=request.workflow_id,
        version=prepared.version,
        owner=request.owner,
        inline_control=settings.inline_control_nodes and opened.recorder is not None,
        approvals=approvals,
        subworkflows=prepared.subworkflows,
        journal=prepared.journal,
        max_task_runs=settings.max_task_runs,
        large_outputs=_large_outputs(run_id, settings.event_output_max_bytes, opened.store),
        template_limits=settings.template_limits,
        max_node_output_bytes=settings.max_node_output_bytes,
        release=release,
        started_at=opened.started_at,
        services=context.services,
        observer=opened.observer,
        limiter=context.node_limits,
        limit_release_s=release.after_s if release is not None else None,
    )
    gate = None
    if run_id != "local":  # a pause is asked for and answered through the run's flow run
        execution.start_gate = gate = PauseGate(
            flow_run_id,
            approvals,
            breakpoints=request.breakpoints,
            requested=signals.pause_event(flow_run_id) if signals is not None else None,
        )
    try:
        flow_run = opened.flow_run
        # A first execution reads no requests unless its flow run was tagged before it started.
        if gate is not None and (flow_run is None or flow_run.run_count > 1 or is_pause_requested(flow_run)):
            await gate.open()
        return await _run_watching_cancellation(execution, flow_run_id, settings.cancel_poll_s, signals, gate)
    finally:
        await approvals.stop()
        await prepared.journal.flush()


def _holds_anyway(held: bool) -> None:
    """A run without a worker's signals has no worker to tell that it lets go."""


async def finish_run(opened: OpenedRun, record: RunRecord, *, ran: bool, recorded: bool = True) -> Any:
    """End the run: a refused run publishes its failed event; a saved run stores its result
    (then its final event goes out); a run that ran sends its summary to Prefect. What the
    flow returns: the result, or the final Prefect state carrying it."""
    result = record.result()
    message = (record.error or {}).get("message") or record.status
    if not ran and record.status == RunStatus.FAILED:
        opened.bus.publish(EventType.EXECUTION_FAILED, status=RunStatus.FAILED, error=record.error, output=None)
    elif record.status != RunStatus.COMPLETED:
        get_run_logger().error("run %s: %s", record.status, message)
    if opened.store is not None and recorded:
        await opened.store.ended(opened.run_id, result)
        opened.writer.release_final()
    if ran:  # after the result is out: the run's followers need not wait for it
        await _summary_artifact(record, opened.context.settings.public_url, opened.recorder)
    if record.status == RunStatus.COMPLETED:
        return result
    if record.status == RunStatus.CANCELLED:
        return Cancelled(message=message, data=result)
    return Failed(message=message, data=result)


async def _crashes(run_id: str) -> int:
    """How many times the run crashed (its worker died) since it last ended otherwise: a
    run retried after it failed for crashing too often gets its crash retries again."""
    async with get_client() as client:
        states = await client.read_flow_run_states(run_id)
    crashes = 0
    for state in sorted(states, key=lambda s: s.timestamp):
        if state.type == StateType.CRASHED:
            crashes += 1
        elif state.type in (StateType.FAILED, StateType.CANCELLED, StateType.COMPLETED):
            crashes = 0
    return crashes


def _trigger_of(flow_run: Any) -> dict[str, Any]:
    """What started a run that does not say so itself (the API and webhooks do)."""
    if flow_run is None:
        return {"type": "api"}
    if flow_run.parent_task_run_id is not None:
        return {"type": "parent"}
    if flow_run.auto_scheduled:
        schedule_id = prefect_compat.schedule_id_of(flow_run)
        return {"type": "schedule", "schedule_id": schedule_id} if schedule_id else {"type": "schedule"}
    return {"type": "prefect-ui"}


def _delay_release(run_id: str, after_s: float | None, holding: Callable[[bool], None]) -> DelayRelease | None:
    """How a long delay lets go of the run (``flows.releases``); None: delays hold it."""
    if after_s is None:
        return None
    return DelayRelease(uuid.UUID(run_id), after_s=max(after_s, prefect_compat.worker_prefetch_s()), holding=holding)


def _large_outputs(run_id: str, limit: int, store: RunStore | None) -> LargeOutputs:
    """Outputs over ``limit`` bytes go to the store, by reference, for runs of saved
    workflows (the API reads them back for the run's owner); other runs keep them whole."""
    keep = functools.partial(store.keep_output, run_id) if store is not None else None
    return LargeOutputs(run_id, limit, keep)


async def _run_watching_cancellation(
    execution: Execution, flow_run_id: str, poll_s: float, signals: CancelSignals | None, gate: PauseGate | None = None
) -> RunRecord:
    """Prefect does not interrupt an in-process flow run that is cancelled: watch the
    run's state and cancel the execution ourselves (running async nodes are cancelled at
    their next await). A worker delivers the cancellations of all its runs (``signals``);
    otherwise the run polls its own state."""
    main = asyncio.create_task(execution.run())
    cancelled = signals.watch(flow_run_id) if signals is not None else asyncio.Event()

    async def wait_for_signal() -> None:
        await cancelled.wait()
        main.cancel()

    async def watch() -> None:
        async with get_client() as client:
            while not main.done():
                await asyncio.sleep(poll_s)
                try:
                    flow_run = await client.read_flow_run(flow_run_id)
                except Exception:  # a hiccup of the API must not end the run
                    continue
                state = flow_run.state
                if gate is not None and is_pause_requested(flow_run):
                    gate.requested.set()
                if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                    cancelled.set()
                    main.cancel()
                    return

    watcher = None
    if flow_run_id != "local":
        watcher = asyncio.create_task(wait_for_signal() if signals is not None else watch())
    try:
        return await main
    except asyncio.CancelledError:
        if not cancelled.is_set():
            raise
        if signals is not None and signals.handing_back(flow_run_id):
            raise HandedBack(flow_run_id) from None
        return execution.record
    finally:
        if watcher is not None:
            watcher.cancel()
        if signals is not None:
            signals.forget(flow_run_id)


async def _summary_artifact(
    record: RunRecord, public_url: str, recorder: prefect_compat.TaskRunRecorder | None
) -> None:
    """A markdown artifact of the run (the Prefect UI's Artifacts tab), linking back to the
    run in FlowMaestro for runs of saved workflows (the API knows only those). Sent after the
    run's task runs, off the critical path, by the ``recorder`` when there is one."""
    rows = ["| node | path | status | attempts | duration | cached |", "|---|---|---|---|---|---|"]
    for run in record.trace[:500]:
        path = "/".join(map(str, run.path)) or "-"
        duration = f"{run.duration_ms} ms" if run.duration_ms is not None else "-"
        rows.append(
            f"| {run.node_id} | {path} | {run.status} | {run.attempts} | {duration} | {'yes' if run.cached else ''} |"
        )
    if len(record.trace) > 500:
        rows.append(f"| ... {len(record.trace) - 500} more | | | | | |")
    skipped = [
        n
        for n, r in record.nodes.items()
        if r.status in (NodeStatus.SKIPPED, NodeStatus.CANCELLED, NodeStatus.PENDING) and r not in record.trace
    ]
    header = f"**{record.workflow}**: {record.status}"
    if record.error:
        header += f" — {record.error.get('message')}"
    if skipped:
        header += f"\n\nNot run: {', '.join(skipped)}"
    if record.workflow_id is not None:
        base = public_url.rstrip("/")
        header += (
            f"\n\n[Run page]({base}/ui/executions/{record.id}) · "
            f"[API: GET /api/executions/{record.id}]({base}/api/executions/{record.id})"
        )
    markdown, description = header + "\n\n" + "\n".join(rows), f"FlowMaestro summary of {record.workflow}"
    if recorder is not None:
        recorder.markdown_artifact(markdown, key="flowmaestro-summary", description=description)
        return
    try:
        await acreate_markdown_artifact(markdown=markdown, key="flowmaestro-summary", description=description)
    except Exception as exc:  # monitoring must not fail the run
        get_run_logger().warning("could not create the summary artifact: %s", exc)
