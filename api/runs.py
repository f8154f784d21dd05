"""Executions: start runs in this process, follow them, cancel them, answer approvals.

What is authoritative for what:
- the run result (outputs, node states, trace) is the engine's, stored when the run ends;
- whether a run is still going is Prefect's: a run cancelled in the Prefect UI, or whose
  process died, shows the state Prefect has for it;
- while a run is going, node states come from the run's event log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.db import Execution, Workflow, WorkflowVersion, utcnow
from api.errors import ApiError
from api.metrics import Metrics
from builder.compiler import compile_canvas
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from flows.approvals import pending_approvals, resume_approval
from flows.event_log import EventLog
from flows.flow import workflow_flow
from flows.launch import start_run
from flows.prefect_compat import request_cancellation
from flows.run_context import RunContext
from flows.settings import EngineSettings
from node_handlers.base import NodeError
from node_handlers.registry import default_registry

log = logging.getLogger("flowmaestro.api.runs")

STATUS_OF_STATE = {
    StateType.SCHEDULED: "pending", StateType.PENDING: "pending", StateType.RUNNING: "running",
    StateType.PAUSED: "paused", StateType.CANCELLING: "running", StateType.COMPLETED: "completed",
    StateType.FAILED: "failed", StateType.CRASHED: "failed", StateType.CANCELLED: "cancelled",
}
FINAL = ("completed", "failed", "cancelled")
NODE_STATUS_OF_EVENT = {"node:started": "running", "node:retrying": "running", "node:paused": "paused",
                        "node:completed": "completed", "node:cached": "cached", "node:error": "failed",
                        "node:skipped": "skipped"}


class RunService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], metrics: Metrics, ui_url: str,
                 event_log: EventLog, engine_settings: EngineSettings):
        self.sessions = sessions
        self.event_log = event_log
        self.metrics = metrics
        self.ui_url = ui_url
        self.running: dict[str, asyncio.Task[Any]] = {}
        # Runs execute in this process, with the API's event log, metrics and saved workflows.
        self.workflow = workflow_flow(RunContext(
            registry=default_registry(), event_log=event_log, settings=engine_settings,
            resolve_workflow=self.resolve_subworkflow, listeners=(metrics.attach,)))

    def links(self, run_id: str) -> dict[str, str]:
        return {"self": f"/api/executions/{run_id}", "stream": f"/api/executions/{run_id}/stream",
                "prefect_ui": f"{self.ui_url}/runs/flow-run/{run_id}"}

    async def start(self, *, owner: str, workflow: Workflow, version: WorkflowVersion,
                    inputs: dict[str, Any]) -> str:
        plan = compile_canvas(version.canvas, default_registry()).plan
        if plan is None:  # saved canvases compiled when saved; a registry change could break one
            raise ApiError(422, "this workflow version no longer compiles; save a new version")
        try:
            validate_inputs(plan.inputs, inputs)
        except InputsInvalid as exc:
            raise ApiError(422, str(exc), [i.to_dict() for i in exc.issues]) from exc
        run_id, task = await start_run(self.workflow, version.canvas, inputs, workflow_id=workflow.id,
                                       version=version.version, owner=owner)
        async with self.sessions() as session:
            session.add(Execution(id=run_id, owner=owner, workflow_id=workflow.id, version=version.version,
                                  workflow_name=workflow.name, status="pending", inputs=inputs))
            await session.commit()
        self.metrics.runs_started.labels(workflow.name).inc()
        self.metrics.runs_in_flight.inc()
        self.running[run_id] = asyncio.create_task(self._finish(run_id, workflow.name, task))
        return run_id

    async def _finish(self, run_id: str, workflow: str, task: asyncio.Task[Any]) -> None:
        try:
            state = await task
            result = await state.result(raise_on_failure=False)
            if not isinstance(result, dict):
                result = {"id": run_id, "status": STATUS_OF_STATE.get(state.type, "failed"),
                          "error": {"message": state.message or str(result)}, "nodes": {}, "trace": []}
        except asyncio.CancelledError:
            result = {"id": run_id, "status": "cancelled", "nodes": {}, "trace": [],
                      "error": {"message": "the API server shut down while the run was in flight"}}
        except Exception as exc:  # the run crashed: record it rather than leave it 'running'
            log.exception("run %s crashed", run_id)
            result = {"id": run_id, "status": "failed", "nodes": {}, "trace": [],
                      "error": {"message": f"the run crashed: {exc}"}}
        finally:
            self.metrics.runs_in_flight.dec()
            self.running.pop(run_id, None)
        await self._store(run_id, result)
        self.metrics.runs_finished.labels(workflow, result.get("status", "failed")).inc()

    async def _store(self, run_id: str, result: dict[str, Any]) -> None:
        async with self.sessions() as session:
            row = await session.get(Execution, run_id)
            if row is not None:
                row.status, row.result, row.updated_at = result.get("status", "failed"), result, utcnow()
                await session.commit()

    async def find(self, owner: str, run_id: str) -> Execution:
        async with self.sessions() as session:
            row = await session.get(Execution, run_id)
        if row is None or row.owner != owner:
            raise ApiError(404, f"execution {run_id} not found")
        return row

    async def read(self, owner: str, run_id: str) -> dict[str, Any]:
        row = await self.find(owner, run_id)
        if row.result is not None:
            return row.result | {"pending_approvals": []}
        async with get_client() as client:
            flow_run = await client.read_flow_run(uuid.UUID(run_id))
        state = flow_run.state
        status = STATUS_OF_STATE.get(state.type, "running") if state else "pending"
        if status in FINAL and run_id not in self.running:
            # Ended outside this process (or the process died): take Prefect's word.
            result = await state.result(raise_on_failure=False) if state else None
            if not isinstance(result, dict):
                result = {"id": run_id, "status": status, "nodes": {}, "trace": [],
                          "error": None if status == "completed" else {"message": state.message if state else None}}
            result["status"] = status
            await self._store(run_id, result)
            return result | {"pending_approvals": []}
        return {"id": run_id, "workflow": row.workflow_name, "workflow_id": row.workflow_id, "version": row.version,
                "status": status, "output": None, "error": None, "nodes": await self._live_nodes(run_id), "trace": [],
                "pending_approvals": await pending_approvals(run_id) if status in ("paused", "running") else [],
                "started_at": flow_run.start_time.isoformat() if flow_run.start_time else None, "ended_at": None}

    async def _live_nodes(self, run_id: str) -> dict[str, Any]:
        """Top-level node states of a run in progress, folded from its event log."""
        nodes: dict[str, Any] = {}
        after = 0
        while True:
            batch = await self.event_log.read(run_id, after=after, limit=1000)
            for event in batch:
                status = NODE_STATUS_OF_EVENT.get(event.type)
                node_id = event.data.get("node_id")
                if status is None or node_id is None or event.data.get("path"):
                    continue
                node = nodes.setdefault(node_id, {"status": status, "output": None, "error": None, "attempts": 0,
                                                  "cached": False, "started_at": None, "ended_at": None})
                node["status"] = status
                if event.type == "node:started":
                    node["started_at"] = event.data.get("timestamp")
                elif event.type in ("node:completed", "node:cached", "node:error"):
                    node.update(output=event.data.get("output"), error=event.data.get("error"),
                                attempts=event.data.get("attempts", 0), cached=event.type == "node:cached",
                                ended_at=event.data.get("timestamp"))
            if len(batch) < 1000:
                return nodes
            after = batch[-1].seq

    async def ended_status(self, run_id: str) -> str | None:
        """The final status Prefect has for a run, or None while it goes on."""
        if run_id in self.running:
            return None
        async with get_client() as client:
            flow_run = await client.read_flow_run(uuid.UUID(run_id))
        status = STATUS_OF_STATE.get(flow_run.state.type) if flow_run.state else None
        return status if status in FINAL else None

    async def list(self, owner: str, workflow_id: str | None, status: str | None) -> list[Execution]:
        """Runs of an owner, newest first. The stored status of a run in progress is
        refreshed from Prefect, so ``status=running`` or ``paused`` finds it."""
        query = select(Execution).where(Execution.owner == owner).order_by(Execution.created_at.desc()).limit(500)
        if workflow_id:
            query = query.where(Execution.workflow_id == workflow_id)
        if status in FINAL:
            query = query.where(Execution.status == status)
        async with self.sessions() as session:
            rows = list(await session.scalars(query))
        live = [row for row in rows if row.status not in FINAL]
        if live:
            async with get_client() as client:
                flow_runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(r.id) for r in live])),
                    limit=len(live), sort=FlowRunSort.ID_DESC)
            states = {str(f.id): f.state for f in flow_runs}
            for row in live:
                state = states.get(row.id)
                if state is not None:
                    row.status = STATUS_OF_STATE.get(state.type, row.status)
        return [row for row in rows if status is None or row.status == status]

    async def cancel(self, owner: str, run_id: str) -> str:
        row = await self.find(owner, run_id)
        if row.status in FINAL:
            raise ApiError(409, f"execution {run_id} has already ended ({row.status})")
        async with get_client() as client:
            flow_run = await client.read_flow_run(uuid.UUID(run_id))
            if flow_run.state and flow_run.state.is_final():
                raise ApiError(409, f"execution {run_id} has already ended ({flow_run.state.name})")
            # The run watches its own state and stops within a second (flows/flow.py).
            await request_cancellation(client, uuid.UUID(run_id))
        return "cancelling"

    async def resume(self, owner: str, run_id: str, node_id: str, path: list[int] | None,
                     values: dict[str, Any]) -> dict[str, str]:
        await self.find(owner, run_id)
        answer = await resume_approval(run_id, node_id, path, values, decided_by=owner)
        if answer.status == "refused":
            raise ApiError(422, answer.message, [{"code": "refused", **i} for i in answer.issues])
        if answer.status == "not_waiting":
            raise ApiError(409, answer.message)
        return {"status": answer.status, "message": answer.message}

    async def resolve_subworkflow(self, reference: str, version: int | None, parent_run_id: str,
                                  owner: str | None) -> dict[str, Any]:
        """The canvas of a saved workflow of the same owner as the run asking for it."""
        async with self.sessions() as session:
            workflow = await session.get(Workflow, reference)
            if workflow is None or workflow.owner != owner or workflow.deleted_at is not None:
                raise NodeError(f"subworkflow {reference!r}: no such workflow", error_type="SubworkflowNotFound")
            found = await session.get(WorkflowVersion, (workflow.id, version or workflow.latest_version))
        if found is None:
            raise NodeError(f"subworkflow {reference!r} has no version {version}", error_type="SubworkflowNotFound")
        return found.canvas

    async def shutdown(self) -> None:
        """Stop runs in flight; each is recorded as cancelled (the server shut down)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
