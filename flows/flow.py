"""The one generic Prefect flow that runs any canvas.

It compiles the canvas it is given (so the flow run's parameters show exactly what ran),
checks the inputs before anything runs, executes the plan with every node as a task run,
watches for cancellation, and returns the run result of the canvas spec (section 9).
A failed or cancelled run ends in that Prefect state and still carries the run result.

A run gets everything it uses from its ``RunContext`` (flows/run_context.py). Two doors:

- ``workflow_flow(context)``: the flow bound to a context its caller built, for runs in the
  caller's process (``flowmaestro run``, the API through ``flows.launch``);
- ``run_workflow``: the module-level flow, the entry point of deployments
  (``flows/flow.py:run_workflow``), which a worker process imports: each run builds its
  context from the environment.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Failed

from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from flows import prefect_compat
from flows.approvals import PrefectApprovals
from flows.engine import Execution
from flows.event_log import EventLogWriter
from flows.events import EventBus, utcnow
from flows.prefect_runner import PrefectRunner
from flows.records import RunRecord
from flows.run_context import RunContext
from flows.subworkflows import ChildFlow, PrefectSubworkflows

FLOW_NAME = "flowmaestro"


def _run_name() -> str:
    canvas = runtime_flow_run.parameters.get("canvas") or {}
    name = canvas.get("name") if isinstance(canvas, dict) else None
    return str(name or "workflow")


def _generic_flow(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Flow:
    """The Prefect options of the generic flow, the same for every door."""
    return flow(name=FLOW_NAME, flow_run_name=_run_name, persist_result=True, validate_parameters=False)(fn)


def workflow_flow(context: RunContext) -> Flow:
    """The generic flow bound to ``context``: call it as ``await bound(canvas=..., inputs=...,
    return_state=True)``. Child workflows run through it too, so they share the context."""

    async def run_workflow(canvas: dict[str, Any], inputs: dict[str, Any] | None = None,
                           workflow_id: str | None = None, version: int | None = None,
                           owner: str | None = None) -> Any:
        """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs."""
        return await _run_in_flow(context, bound, canvas, inputs, workflow_id, version, owner)

    bound = _generic_flow(run_workflow)
    return bound


@_generic_flow
async def run_workflow(canvas: dict[str, Any], inputs: dict[str, Any] | None = None,
                       workflow_id: str | None = None, version: int | None = None,
                       owner: str | None = None) -> Any:
    """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs."""
    # The deployment entry point: a worker process runs one flow run, so this is where its
    # context (settings, event log) is built, once.
    context = RunContext.from_environment()
    try:
        return await _run_in_flow(context, workflow_flow(context), canvas, inputs, workflow_id, version, owner)
    finally:
        await context.event_log.close()


async def _run_in_flow(context: RunContext, child_flow: ChildFlow, canvas: dict[str, Any],
                       inputs: dict[str, Any] | None, workflow_id: str | None, version: int | None,
                       owner: str | None) -> Any:
    flow_context = FlowRunContext.get()
    run_id = str(flow_context.flow_run.id) if flow_context and flow_context.flow_run else "local"
    # A run executed again (a Prefect retry, elsewhere) continues its event numbering.
    start_seq = await context.event_log.last_seq(run_id) if run_id != "local" else 0
    bus = EventBus(run_id, start_seq=start_seq)
    for listener in context.listeners:
        listener(bus)
    # Every run keeps its events in the event log, wherever it executes.
    writer = EventLogWriter(context.event_log)
    writer.attach(bus)
    try:
        subworkflows = PrefectSubworkflows(context.resolve_workflow, child_flow, owner)
        return await _run(context, canvas, inputs, workflow_id, version, run_id, bus, subworkflows)
    finally:
        await writer.close()


async def _run(context: RunContext, canvas: dict[str, Any], inputs: dict[str, Any] | None,
               workflow_id: str | None, version: int | None, run_id: str, bus: EventBus,
               subworkflows: PrefectSubworkflows) -> Any:
    registry = context.registry
    compiled = compile_canvas(canvas, registry)
    name = canvas.get("name", "workflow") if isinstance(canvas, dict) else "workflow"
    if not compiled.ok:
        issues = [issue.to_dict() for issue in compiled.errors]
        return _refused(bus, name, "invalid canvas", issues)
    plan = compiled.plan
    assert plan is not None
    try:
        resolved_inputs = validate_inputs(plan.inputs, inputs or {})
    except InputsInvalid as exc:
        return _refused(bus, name, "invalid inputs", [issue.to_dict() for issue in exc.issues])

    settings = context.settings
    # Off when the installed Prefect is not one inline recording was tested on: control
    # nodes then run as normal task runs, and containers are not recorded.
    record_inline = prefect_compat.inline_recording_supported()
    execution = Execution(plan, registry, run_id=run_id, inputs=resolved_inputs,
                          runner=PrefectRunner(record_inline=record_inline), bus=bus, env=os.environ,
                          env_allowlist=settings.env_allowlist, workflow_id=workflow_id, version=version,
                          inline_control=settings.inline_control_nodes and record_inline,
                          approvals=PrefectApprovals(run_id), subworkflows=subworkflows)
    record = await _run_watching_cancellation(execution, run_id, settings.cancel_poll_s)
    await _summary_artifact(record)
    result = record.result()
    if record.status == "completed":
        return result
    message = (record.error or {}).get("message") or record.status
    get_run_logger().error("run %s: %s", record.status, message)
    if record.status == "cancelled":
        return Cancelled(message=message, data=result)
    return Failed(message=message, data=result)


def _refused(bus: EventBus, name: str, what: str, issues: list[dict[str, Any]]) -> Any:
    """A run refused before anything ran (invalid canvas or inputs)."""
    now = utcnow().isoformat()
    message = f"{what}: " + "; ".join(i["message"] for i in issues)
    error = {"message": message, "type": what.replace(" ", "_"), "issues": issues}
    result = {"id": bus.execution_id, "workflow": name, "status": "failed", "output": None, "error": error,
              "nodes": {}, "trace": [], "started_at": now, "ended_at": now}
    bus.publish("execution:failed", status="failed", error=error, output=None)
    return Failed(message=message, data=result)


async def _run_watching_cancellation(execution: Execution, run_id: str, poll_s: float) -> RunRecord:
    """Prefect does not interrupt an in-process flow run that is cancelled: poll the
    run's state and cancel the execution ourselves (running async nodes are cancelled at
    their next await)."""
    main = asyncio.create_task(execution.run())
    cancelled = asyncio.Event()

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

    watcher = asyncio.create_task(watch()) if run_id != "local" else None
    try:
        return await main
    except asyncio.CancelledError:
        if not cancelled.is_set():
            raise
        return execution.record
    finally:
        if watcher is not None:
            watcher.cancel()


async def _summary_artifact(record: RunRecord) -> None:
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
    try:
        await acreate_markdown_artifact(markdown=header + "\n\n" + "\n".join(rows), key="flowmaestro-summary",
                                        description=f"FlowMaestro summary of {record.workflow}")
    except Exception as exc:  # monitoring must not fail the run
        get_run_logger().warning("could not create the summary artifact: %s", exc)
