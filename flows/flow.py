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
import os
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Failed

from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from flows import prefect_compat
from flows.approvals import PrefectApprovals
from flows.decisions import DecisionSigner
from flows.engine import Execution
from flows.event_log import EventLogWriter
from flows.events import EventBus, utcnow
from flows.journal import RunJournal
from flows.large_outputs import LargeOutputs
from flows.prefect_runner import PrefectRunner
from flows.records import RunRecord
from flows.releases import DelayRelease
from flows.run_context import CancelSignals, RunContext, RunStore
from flows.subworkflows import ChildFlow, PrefectSubworkflows, tag_run_with_workflow

FLOW_NAME = "flowmaestro"


def _generic_flow(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Flow:
    """The Prefect options of the generic flow, the same for every door. No ``flow_run_name``:
    Prefect would look up the server's default result storage once more per run (about
    40 ms) to call it; the run names itself (``_name_after_canvas``)."""
    # The run result is not persisted in Prefect's result storage: the store keeps it, and a
    # file there holding node outputs verbatim is one a forged state could point Prefect's
    # reader at. Callers in this process read the state's in-memory result
    # (``prefect_compat.run_result``); should a result ever be persisted, it is plain JSON.
    return flow(name=FLOW_NAME, persist_result=False, validate_parameters=False,
                result_serializer=prefect_compat.RESULT_SERIALIZER)(fn)


async def _name_after_canvas(flow_context: FlowRunContext | None, canvas: Any) -> None:
    """A run given a canvas is named after it; a run of a saved workflow keeps the name it
    was created with (the API names it after the workflow)."""
    name = canvas.get("name") if isinstance(canvas, dict) else None
    if flow_context is None or flow_context.flow_run is None or not isinstance(name, str) or not name \
            or flow_context.flow_run.name == name:
        return
    await flow_context.client.set_flow_run_name(flow_context.flow_run.id, name)
    flow_context.flow_run.name = name


def workflow_flow(context: RunContext) -> Flow:
    """The generic flow bound to ``context``: call it as ``await bound(canvas=..., inputs=...,
    return_state=True)``. Child workflows run through it too, so they share the context."""

    async def run_workflow(canvas: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                           workflow_id: str | None = None, version: int | None = None,
                           owner: str | None = None, trigger: dict[str, Any] | None = None,
                           depth: int = 0, journal: str | None = None) -> Any:
        """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs: the ``canvas``
        given, or version ``version`` (the latest when empty) of the saved workflow
        ``workflow_id`` of ``owner``. ``depth``: how deep a sub-workflow run is nested;
        ``journal``: where a child run keeps what it completed (the flow run id otherwise)."""
        return await _run_in_flow(context, bound, canvas, inputs, workflow_id, version, owner, trigger, depth,
                                  journal)

    bound = _generic_flow(run_workflow)
    return bound


@_generic_flow
async def run_workflow(canvas: dict[str, Any] | None = None, inputs: dict[str, Any] | None = None,
                       workflow_id: str | None = None, version: int | None = None,
                       owner: str | None = None, trigger: dict[str, Any] | None = None, depth: int = 0,
                       journal: str | None = None) -> Any:
    """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs."""
    # An entry point for processes that run one flow run (Prefect's own workers): the
    # context is built from the environment for this run. FlowMaestro's worker
    # (deployments/worker.py) binds the flow to one context for all its runs instead.
    context = RunContext.from_environment()
    try:
        return await _run_in_flow(context, workflow_flow(context), canvas, inputs, workflow_id, version, owner,
                                  trigger, depth, journal)
    finally:
        await context.close()


async def _run_in_flow(context: RunContext, child_flow: ChildFlow, canvas: dict[str, Any] | None,
                       inputs: dict[str, Any] | None, workflow_id: str | None, version: int | None,
                       owner: str | None, trigger: dict[str, Any] | None, depth: int = 0,
                       journal_id: str | None = None) -> Any:
    flow_context = FlowRunContext.get()
    flow_run = flow_context.flow_run if flow_context else None
    run_id = str(flow_run.id) if flow_run else "local"
    await _name_after_canvas(flow_context, canvas)
    # A run executed again (a Prefect retry, elsewhere) continues its event numbering.
    start_seq = await context.event_log.last_seq(run_id) if run_id != "local" else 0
    bus = EventBus(run_id, start_seq=start_seq)
    for listener in context.listeners:
        listener(bus)
    # Every run keeps its events in the event log, wherever it executes.
    saved = context.store is not None and workflow_id is not None and owner is not None
    # For a saved workflow the final event waits until the result is stored: a client that
    # sees the run end reads its result.
    writer = EventLogWriter(context.event_log, hold_final=saved)
    writer.attach(bus)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(writer.close)
        # Closed first: what it has not sent yet goes before the run ends.
        recorder = await stack.enter_async_context(
            prefect_compat.task_run_recorder(context.task_run_sender, logs=context.settings.node_logs))
        if saved:
            assert context.store is not None and workflow_id is not None and owner is not None
            await tag_run_with_workflow(flow_context, workflow_id)  # a child run's tag (its parent's call has none)
            try:
                found = await context.store.load(owner, workflow_id, version)
            except LookupError as exc:
                return _refused(bus, canvas.get("name", "workflow") if isinstance(canvas, dict) else "workflow",
                                "workflow not found", [{"message": str(exc), "code": "workflow_not_found"}])
            canvas, version = found.canvas, found.version
            crashes = await _crashes(run_id) if flow_run is not None and flow_run.run_count > 1 else 0
            if crashes > context.settings.crash_retries:
                times = f"{crashes} time{'s' if crashes > 1 else ''}"
                refused = _refused(bus, found.name, "crashed too often", [{
                    "message": f"its worker died {times} (FLOWMAESTRO_CRASH_RETRIES="
                               f"{context.settings.crash_retries}); retry it when the cause is fixed",
                    "code": "crash_retries_exhausted"}])
                await context.store.ended(run_id, _result_of(refused))
                return refused
            await context.store.started(run_id, owner=owner, workflow_id=workflow_id, version=found.version,
                                        name=found.name, inputs=dict(inputs or {}),
                                        trigger=trigger or _trigger_of(flow_run))
        subworkflows = PrefectSubworkflows(context.resolve_workflow, child_flow, owner, by_reference=saved,
                                           depth=depth, max_depth=context.settings.max_subworkflow_depth)
        # Only saved runs keep their journal: they are the ones Prefect can run again.
        journal = await RunJournal.open(journal_id or run_id, context.store if saved else None,
                                        workflow_id=workflow_id, owner=owner,
                                        secrets=[os.environ.get(n, "") for n in context.settings.env_allowlist])
        outcome, record = await _run(context, canvas or {}, inputs, workflow_id, version, owner, run_id, bus,
                                     subworkflows, journal, recorder)
        if saved:
            assert context.store is not None
            await context.store.ended(run_id, _result_of(outcome))
            writer.release_final()
        if record is not None:  # after the result is out: the run's followers need not wait for it
            await _summary_artifact(record, context.settings.public_url, recorder)
        return outcome


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


def _result_of(outcome: Any) -> dict[str, Any]:
    """The run result inside what the flow returns (a result, or a final state carrying one)."""
    if isinstance(outcome, dict):
        return outcome
    data = getattr(outcome, "data", None)
    if isinstance(data, dict):
        return data
    return {"status": "failed", "error": {"message": str(getattr(outcome, "message", outcome))}}


async def _run(context: RunContext, canvas: dict[str, Any], inputs: dict[str, Any] | None,
               workflow_id: str | None, version: int | None, owner: str | None, run_id: str, bus: EventBus,
               subworkflows: PrefectSubworkflows, journal: RunJournal,
               recorder: prefect_compat.TaskRunRecorder | None) -> tuple[Any, RunRecord | None]:
    """The run's outcome (its result, or a final state carrying it) and record (None when
    it was refused before anything ran)."""
    registry = context.registry
    # The caps the API applies, without its time budget: a busy worker must not refuse a
    # saved version for being slow, and the caps bound its work already.
    compiled = compile_canvas(canvas, registry, context.settings.compile_limits(timed=False))
    name = canvas.get("name", "workflow") if isinstance(canvas, dict) else "workflow"
    if not compiled.ok:
        issues = [issue.to_dict() for issue in compiled.errors]
        return _refused(bus, name, "invalid canvas", issues), None
    plan = compiled.plan
    assert plan is not None
    try:
        resolved_inputs = validate_inputs(plan.inputs, inputs or {})
    except InputsInvalid as exc:
        return _refused(bus, name, "invalid inputs", [issue.to_dict() for issue in exc.issues]), None

    settings = context.settings
    # A worker lets go of a run of a deployment that waits long for a person or on a delay
    # (the run replays from its journal when answered or due); other runs have nobody to
    # replay them.
    flow_context = FlowRunContext.get()
    releasable = journal.store is not None and flow_context is not None \
        and flow_context.flow_run.deployment_id is not None
    signals = context.cancellations
    holding = functools.partial(signals.holding, run_id) if signals is not None else (lambda held: None)
    approvals = PrefectApprovals(run_id, hold_s=settings.approval_hold_s if releasable else None, holding=holding,
                                 signer=DecisionSigner.from_settings(settings.decision_key, settings.secret_key,
                                                                     settings.home),
                                 allow_unverified=settings.approval_prefect_ui)
    execution = Execution(plan, registry, run_id=run_id, inputs=resolved_inputs,
                          runner=PrefectRunner(recorder=recorder, cached=context.cached_task), bus=bus,
                          env=os.environ, env_allowlist=settings.env_allowlist, workflow_id=workflow_id,
                          version=version, owner=owner, inline_control=settings.inline_control_nodes and recorder is not None,
                          approvals=approvals, subworkflows=subworkflows, journal=journal,
                          max_task_runs=settings.max_task_runs,
                          large_outputs=_large_outputs(run_id, settings.event_output_max_bytes,
                                                       context.store if journal.store is not None else None),
                          template_limits=settings.template_limits, max_node_output_bytes=settings.max_node_output_bytes,
                          release=_delay_release(run_id, settings.delay_release_s, holding) if releasable else None)
    approvals.busy = execution.leaf_running
    try:
        record = await _run_watching_cancellation(execution, run_id, settings.cancel_poll_s, context.cancellations)
    finally:
        await journal.flush()
    result = record.result()
    if record.status == "completed":
        return result, record
    message = (record.error or {}).get("message") or record.status
    get_run_logger().error("run %s: %s", record.status, message)
    if record.status == "cancelled":
        return Cancelled(message=message, data=result), record
    return Failed(message=message, data=result), record


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


def _refused(bus: EventBus, name: str, what: str, issues: list[dict[str, Any]]) -> Any:
    """A run refused before anything ran (invalid canvas or inputs)."""
    now = utcnow().isoformat()
    message = f"{what}: " + "; ".join(i["message"] for i in issues)
    error = {"message": message, "type": what.replace(" ", "_"), "issues": issues}
    result = {"id": bus.execution_id, "workflow": name, "status": "failed", "output": None, "error": error,
              "nodes": {}, "trace": [], "started_at": now, "ended_at": now}
    bus.publish("execution:failed", status="failed", error=error, output=None)
    return Failed(message=message, data=result)


async def _run_watching_cancellation(execution: Execution, run_id: str, poll_s: float,
                                     signals: CancelSignals | None) -> RunRecord:
    """Prefect does not interrupt an in-process flow run that is cancelled: watch the
    run's state and cancel the execution ourselves (running async nodes are cancelled at
    their next await). A worker delivers the cancellations of all its runs (``signals``);
    otherwise the run polls its own state."""
    main = asyncio.create_task(execution.run())
    cancelled = signals.watch(run_id) if signals is not None else asyncio.Event()

    async def wait_for_signal() -> None:
        await cancelled.wait()
        main.cancel()

    async def watch() -> None:
        async with get_client() as client:
            while not main.done():
                await asyncio.sleep(poll_s)
                try:
                    state = (await client.read_flow_run(run_id)).state
                except Exception:  # a hiccup of the API must not end the run
                    continue
                if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                    cancelled.set()
                    main.cancel()
                    return

    watcher = None
    if run_id != "local":
        watcher = asyncio.create_task(wait_for_signal() if signals is not None else watch())
    try:
        return await main
    except asyncio.CancelledError:
        if not cancelled.is_set():
            raise
        return execution.record
    finally:
        if watcher is not None:
            watcher.cancel()
        if signals is not None:
            signals.forget(run_id)


async def _summary_artifact(record: RunRecord, public_url: str,
                            recorder: prefect_compat.TaskRunRecorder | None) -> None:
    """A markdown artifact of the run (the Prefect UI's Artifacts tab), linking back to the
    run in FlowMaestro for runs of saved workflows (the API knows only those). Sent after the
    run's task runs, off the critical path, by the ``recorder`` when there is one."""
    rows = ["| node | path | status | attempts | duration | cached |", "|---|---|---|---|---|---|"]
    for run in record.trace[:500]:
        path = "/".join(map(str, run.path)) or "-"
        duration = f"{run.duration_ms} ms" if run.duration_ms is not None else "-"
        rows.append(f"| {run.node_id} | {path} | {run.status} | {run.attempts} | {duration} | "
                    f"{'yes' if run.cached else ''} |")
    if len(record.trace) > 500:
        rows.append(f"| ... {len(record.trace) - 500} more | | | | | |")
    skipped = [n for n, r in record.nodes.items() if r.status in ("skipped", "cancelled", "pending")
               and r not in record.trace]
    header = f"**{record.workflow}**: {record.status}"
    if record.error:
        header += f" — {record.error.get('message')}"
    if skipped:
        header += f"\n\nNot run: {', '.join(skipped)}"
    if record.workflow_id is not None:
        base = public_url.rstrip("/")
        header += (f"\n\n[Run page]({base}/ui/executions/{record.id}) · "
                   f"[API: GET /api/executions/{record.id}]({base}/api/executions/{record.id})")
    markdown, description = header + "\n\n" + "\n".join(rows), f"FlowMaestro summary of {record.workflow}"
    if recorder is not None:
        recorder.markdown_artifact(markdown, key="flowmaestro-summary", description=description)
        return
    try:
        await acreate_markdown_artifact(markdown=markdown, key="flowmaestro-summary", description=description)
    except Exception as exc:  # monitoring must not fail the run
        get_run_logger().warning("could not create the summary artifact: %s", exc)
