"""The one generic Prefect flow that runs any canvas.

It compiles the canvas it is given (so the flow run's parameters show exactly what ran),
checks the inputs before anything runs, executes the plan with every node as a task run,
watches for cancellation, and returns the run result of the canvas spec (section 9).
A failed or cancelled run ends in that Prefect state and still carries the run result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import Cancelled, Failed

from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from flows.engine import Execution
from flows.event_log import EventLog, EventLogWriter, event_log_from_env
from flows.events import EventBus, utcnow
from flows.prefect_runner import PrefectRunner
from flows.records import RunRecord
from flows.settings import engine_settings
from node_handlers.registry import default_registry

RunListener = Callable[[EventBus], None]
_run_listeners: list[RunListener] = []


def add_run_listener(listener: RunListener) -> None:
    """Call ``listener(bus)`` at the start of every run executed in this process, so it
    can subscribe to the run's events (the CLI's progress view, durable event logs)."""
    _run_listeners.append(listener)


def remove_run_listener(listener: RunListener) -> None:
    if listener in _run_listeners:
        _run_listeners.remove(listener)


def _run_name() -> str:
    canvas = runtime_flow_run.parameters.get("canvas") or {}
    name = canvas.get("name") if isinstance(canvas, dict) else None
    return str(name or "workflow")


@flow(name="flowmaestro", flow_run_name=_run_name, persist_result=True, validate_parameters=False)
async def run_workflow(canvas: dict[str, Any], inputs: dict[str, Any] | None = None,
                       workflow_id: str | None = None, version: int | None = None) -> Any:
    """Run a FlowMaestro canvas (canvas-v1 JSON) with the given inputs."""
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else "local"
    registry = default_registry()
    event_log = _process_event_log()
    # A run executed again (a Prefect retry, elsewhere) continues its event numbering.
    bus = EventBus(run_id, start_seq=await event_log.last_seq(run_id) if run_id != "local" else 0)
    for listener in list(_run_listeners):
        listener(bus)
    # Every run keeps its events in the event log, wherever it executes.
    writer = EventLogWriter(event_log)
    writer.attach(bus)
    try:
        return await _run(canvas, inputs, workflow_id, version, run_id, registry, bus)
    finally:
        await writer.close()


async def _run(canvas: dict[str, Any], inputs: dict[str, Any] | None, workflow_id: str | None,
               version: int | None, run_id: str, registry: Any, bus: EventBus) -> Any:
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

    settings = engine_settings()
    from flows.approvals import PrefectApprovals
    from flows.subworkflows import PrefectSubworkflows

    execution = Execution(plan, registry, run_id=run_id, inputs=resolved_inputs, runner=PrefectRunner(), bus=bus,
                          env=os.environ, env_allowlist=settings.env_allowlist, workflow_id=workflow_id,
                          version=version, inline_control=settings.inline_control_nodes,
                          approvals=PrefectApprovals(run_id), subworkflows=PrefectSubworkflows())
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


_event_logs: dict[int, EventLog] = {}


def _process_event_log() -> EventLog:
    """One event log (and connection pool) per event loop of this process."""
    loop = asyncio.get_running_loop()
    found = _event_logs.get(id(loop))
    if found is None:
        _event_logs.clear()  # a new loop: older pools belong to loops that are gone
        found = _event_logs[id(loop)] = event_log_from_env()
    return found


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
