"""Executions: start runs on workers, follow them, cancel them, answer approvals.

The API never executes a run. ``start`` creates a flow run of the workflow's Prefect
deployment and answers; a worker picks it up, records its start and its result in the
store. What is authoritative for what:

- the run result (outputs, node states, trace) is the worker's, stored when the run ends;
- whether a run is still going is Prefect's: a run cancelled in the Prefect UI, or whose
  worker died, shows the state Prefect has for it;
- while a run is going, node states come from the run's event log.

The API never reads a result from Prefect (``State.result()``): a state's data names a file
and a serializer, and whoever can set a state through Prefect's API names a pickle. A run
that ended without its worker storing the result gets its node states from the event log.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import State, StateType

from api.compiling import CanvasCompiler
from api.metrics import Metrics
from api.prefect_gateway import PrefectGateway
from api.schemas import RunResult, retries_of
from builder.plan import Plan
from deployments.workflow_deployments import WorkflowDeployment, WorkflowDeployments
from flows.approvals import pending_approvals, resume_approval
from flows.decisions import DecisionSigner
from flows.event_log import EventLog
from flows.events import RunEvent, utcnow
from flows.large_outputs import is_ref
from flows.pauses import split_pause
from flows.prefect_compat import is_delay_released, mark_cancelled, request_cancellation, schedule_again
from node_handlers.credentials import CredentialReader, missing_credentials
from node_handlers.registry import HandlerRegistry
from store.audit import AuditLog
from store.db import ExecutionRow
from store.errors import Conflict, Invalid, NotFound, Unavailable
from store.lists import ExecutionFilter, executions_page
from store.outbox import Accepted, RunOutbox, Unsent
from store.pagination import Page
from store.queries import FINAL_STATUSES, Executions, NodeOutcomes, SavedVersion, Workflows
from store.vocabulary import NODE_STATUS_OF_EVENT, EventType, RunStatus
from store.workflow_meta import refusal

log = logging.getLogger("flowmaestro.api.runs")

STATUS_OF_STATE = {
    StateType.SCHEDULED: RunStatus.PENDING,
    StateType.PENDING: RunStatus.PENDING,
    StateType.RUNNING: RunStatus.RUNNING,
    StateType.PAUSED: RunStatus.PAUSED,
    StateType.CANCELLING: RunStatus.RUNNING,
    StateType.COMPLETED: RunStatus.COMPLETED,
    StateType.FAILED: RunStatus.FAILED,
    StateType.CANCELLED: RunStatus.CANCELLED,
    # Its worker died: the recovery automation schedules it again at once, and a run out of
    # crash retries ends Failed (deployments/recovery.py). So it waits for a worker.
    StateType.CRASHED: RunStatus.PENDING,
}
RETRYABLE_STATES = (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
CANCELLING = "cancelling"
"""The cancel route's answer for a run whose worker was asked to stop it: not a run status
(the run is ``running`` until its worker has stopped it, then ``cancelled``)."""


WAITING_RETRY_AFTER_S = 10
WAITING_COUNT_S = 0.5


def refuse_other_request(earlier: Accepted, inputs: dict[str, Any], version: int | None) -> None:
    """A key already used answers the run it accepted; when that run was accepted with other
    inputs (or another version), the key was reused by mistake: 422 naming what differs, as
    payment APIs do, rather than the other request's run."""
    run_id = earlier.execution_id
    differs = sorted(k for k in set(earlier.inputs) | set(inputs) if earlier.inputs.get(k) != inputs.get(k))
    fields = [f"inputs.{k}" for k in differs]
    if version is not None and earlier.version != version:
        fields.append("version")
    if not fields:
        return
    raise Invalid(
        f"this Idempotency-Key already started run {run_id} with other values ({', '.join(fields)}); "
        "send a new key for a new run",
        [
            {
                "code": "idempotency_mismatch",
                "field": field,
                "message": f"differs from the request that used this key first (run {run_id})",
            }
            for field in fields
        ],
    )


class RunService:
    def __init__(
        self,
        *,
        workflows: Workflows,
        executions: Executions,
        outcomes: NodeOutcomes,
        deployments: WorkflowDeployments,
        prefect: PrefectGateway,
        registry: HandlerRegistry,
        event_log: EventLog,
        metrics: Metrics,
        compiler: CanvasCompiler,
        decisions: DecisionSigner,
        prefect_public_url: str | None = None,
        outbox: RunOutbox,
        credentials: CredentialReader | None = None,
        audit: AuditLog | None = None,
        max_waiting: int = 5000,
        accepted: Callable[[], None] = lambda: None,
    ):
        """``prefect``: every call to Prefect goes through it (bounded, errors mapped).
        ``decisions``: signs the approval decisions this API writes (workers check them).
        ``prefect_public_url``: the Prefect UI as browsers reach it, for links; None gives
        out no Prefect address (its API is code execution on every host that reads its
        results, so where it is stays the operator's to publish). ``credentials``: the
        owners' stored credentials, to refuse a run naming one its owner lacks. ``outbox``:
        where a run is accepted before its flow run exists (``api.outbox`` creates them);
        ``max_waiting``: the most accepted runs waiting for their flow run; ``accepted``:
        called when a run waits there (the drainer wakes up)."""
        self.workflows = workflows
        self.executions = executions
        self.outcomes = outcomes
        self.deployments = deployments
        self.prefect = prefect
        self.registry = registry
        self.compiler = compiler
        self.event_log = event_log
        self.metrics = metrics
        self.prefect_public_url = prefect_public_url.rstrip("/") if prefect_public_url else None
        self.decisions = decisions
        self.credentials = credentials
        self.audit = audit
        """Where cancels and approval decisions (kept by Prefect) are recorded; None: nowhere."""
        self._deployment_ids: dict[tuple[str, int], uuid.UUID] = {}
        self.outbox = outbox
        self.max_waiting = max_waiting
        self._waiting_count: tuple[float, int] = (float("-inf"), 0)
        self.accepted = accepted

    def links(self, run_id: str, flow_run_id: str | None = None) -> dict[str, str]:
        """Where to follow a run; its Prefect UI page once its flow run is known."""
        links = {"self": f"/api/executions/{run_id}", "stream": f"/api/executions/{run_id}/stream"}
        if self.prefect_public_url and flow_run_id:
            links["prefect_ui"] = f"{self.prefect_public_url}/runs/flow-run/{flow_run_id}"
        return links

    async def flow_run_id(self, owner: str, run_id: str) -> uuid.UUID:
        """The flow run of a run of ``owner`` (404 when none; 409 while it is accepted and not
        created yet): what every call to Prefect about the run names."""
        row = await self.executions.get(owner, run_id)
        return flow_run_of(row)

    # --- deployments -----------------------------------------------------------------

    async def sync_deployment(self, saved: SavedVersion, plan: Plan) -> uuid.UUID:
        """Create or update the workflow's deployment from its latest version (``saved``, and
        ``plan`` compiled from it by the caller): its Run form asks for that version's inputs."""
        deployment = WorkflowDeployment(
            saved.workflow_id,
            saved.owner,
            saved.name,
            saved.latest_version,
            {name: dict(spec) for name, spec in plan.inputs.items()},
            plan.description,
        )
        deployment_id = await self.prefect.call(
            "create the workflow's deployment", lambda client: self.deployments.ensure(client, deployment)
        )
        self._deployment_ids[(saved.workflow_id, saved.latest_version)] = deployment_id
        return deployment_id

    async def deployment_of(self, owner: str, workflow_id: str) -> tuple[SavedVersion, Plan, uuid.UUID]:
        """The workflow's latest version, its plan and its deployment (created when missing,
        e.g. when Prefect was down at the save)."""
        saved = await self.workflows.version(owner, workflow_id, None)
        plan = await self.compiler.plan_of(saved)
        return saved, plan, await self.ensure_deployment(saved, plan)

    async def ensure_deployment(self, saved: SavedVersion, plan: Plan) -> uuid.UUID:
        """The deployment of the workflow's latest version: the one this process made, or
        made now (``sync_deployment``)."""
        deployment_id = self._deployment_ids.get((saved.workflow_id, saved.latest_version))
        if deployment_id is None:
            deployment_id = await self.sync_deployment(saved, plan)
        return deployment_id

    async def find_deployment(self, workflow_id: str, name: str) -> uuid.UUID | None:
        """The deployment of the workflow under ``name`` (an earlier name), if Prefect has it."""
        return await self.prefect.call(
            "find the old deployment", lambda client: self.deployments.find(client, workflow_id, name)
        )

    async def remove_deployment(self, workflow_id: str, name: str) -> None:
        await self.prefect.call(
            "remove the workflow's deployment", lambda client: self.deployments.remove(client, workflow_id, name)
        )

    # --- runs ------------------------------------------------------------------------

    async def start(
        self,
        *,
        owner: str,
        workflow_id: str,
        version: int | None,
        inputs: dict[str, Any],
        trigger: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        check_credentials: bool = False,
        journal: str | None = None,
        traceparent: str | None = None,
        actor: str | None = None,
        breakpoints: builtins.list[str] | None = None,
    ) -> str:
        """Check the inputs and record the run as accepted: its execution id (a uuid4 of our
        own). Its flow run is created after (``create_flow_run``, by ``api.outbox``); the
        worker does the rest. An ``idempotency_key`` used before answers the run it accepted
        (422 when the inputs or version differ). 503 naming Prefect when too many accepted
        runs wait for their flow run, naming the database when the store is down.
        ``check_credentials``: refuse (``Invalid``) a workflow naming a credential its owner
        has not stored (a trigger's run fails at its worker instead, where the owner sees it).
        ``journal``: the journal the run starts from (``api.reruns`` seeds it).
        ``traceparent``: the request's, the parent of the run's span (a label of its flow run)."""
        saved = await self.workflows.version(owner, workflow_id, version)
        trigger = trigger or {"type": "api"}
        refused = refusal(workflow_id, saved.status, str(trigger.get("type", "api")))
        if refused is not None:  # a draft or archived workflow (store.workflow_meta)
            raise refused
        plan, _resolved = await self.compiler.checked_inputs(saved, inputs)
        unknown = [(i, node_id) for i, node_id in enumerate(breakpoints or ()) if node_id not in plan.nodes]
        if unknown:
            raise Invalid(
                f"breakpoints name nodes the workflow does not have: {', '.join(repr(n) for _, n in unknown)}",
                [
                    {"code": "unknown_node", "field": f"body.breakpoints.{i}", "message": f"no node {n!r}"}
                    for i, n in unknown
                ],
            )
        if check_credentials and self.credentials is not None:
            missing = await missing_credentials(self.credentials, owner, saved.canvas)
            if missing:
                raise Invalid("; ".join(issue["message"] for issue in missing), missing)
        if await self._waiting() >= self.max_waiting:
            raise Unavailable(
                "prefect",
                f"{self.max_waiting} accepted runs are waiting for Prefect to create them "
                "(FLOWMAESTRO_ACCEPT_MAX_WAITING); nothing was recorded, retry later",
                WAITING_RETRY_AFTER_S,
            )
        request: dict[str, Any] = {}
        if journal is not None:
            request["journal"] = journal
        if traceparent is not None:
            request["traceparent"] = traceparent
        if breakpoints:
            request["breakpoints"] = list(breakpoints)
        accepted = await self.outbox.accept(
            execution_id=str(uuid.uuid4()),
            owner=owner,
            workflow_id=saved.workflow_id,
            version=saved.version,
            workflow_name=saved.name,
            inputs=inputs,
            trigger=trigger,
            request=request,
            idempotency_key=idempotency_key,
            actor=actor,
        )
        if not accepted.new:
            refuse_other_request(accepted, inputs, saved.version if version else None)
            return accepted.execution_id
        self._waiting_count = (self._waiting_count[0], self._waiting_count[1] + 1)
        self.metrics.runs_started.labels(saved.name).inc()
        self.accepted()
        return accepted.execution_id

    async def _waiting(self) -> int:
        """How many accepted runs wait for their flow run: counted in the store at most every
        ``WAITING_COUNT_S`` (a burst of executes does not count the table once each), plus
        those this process accepted since."""
        counted_at, count = self._waiting_count
        now = asyncio.get_running_loop().time()
        if now - counted_at > WAITING_COUNT_S:
            count = await self.outbox.awaiting()
            self._waiting_count = (now, count)
        return count

    async def refuse_other_request(self, owner: str, run_id: str, inputs: dict[str, Any], version: int | None) -> None:
        """422 when the run ``run_id``, answered for a key used before, had other inputs."""
        try:
            earlier = await self.executions.get(owner, run_id)
        except NotFound:
            return  # gone since
        refuse_other_request(Accepted(earlier.id, False, earlier.inputs, earlier.version), inputs, version)

    async def create_flow_run(self, unsent: Unsent) -> None:
        """Create the flow run of an accepted run (``api.outbox``) and record it. Its
        idempotency key is the execution id's: a second create (another drainer, a retry
        after a timeout that did create it) answers the first's flow run."""
        _latest, _plan, deployment_id = await self.deployment_of(unsent.owner, unsent.workflow_id)
        request = unsent.request
        try:
            flow_run = await self.prefect.call(
                "start the run",
                lambda client: self.deployments.start(
                    client,
                    deployment_id,
                    workflow_id=unsent.workflow_id,
                    name=unsent.workflow_name,
                    version=unsent.version,
                    inputs=unsent.inputs,
                    trigger=unsent.trigger,
                    idempotency_key=f"execution:{unsent.execution_id}",
                    journal=request.get("journal"),
                    traceparent=request.get("traceparent"),
                    breakpoints=request.get("breakpoints"),
                    execution_id=unsent.execution_id,
                ),
            )
        except NotFound:  # the deployment was removed since it was cached: make it again
            self._deployment_ids = {k: v for k, v in self._deployment_ids.items() if v != deployment_id}
            raise
        await self.outbox.created(unsent.execution_id, str(flow_run.id))
        if (flow_run.parameters or {}).get("version") != unsent.version:
            # An earlier create made it (the run was cancelled, then retried with another
            # version): it runs the version the retry asked for. (A worker taking it before
            # this lands runs the earlier one.)
            parameters = dict(flow_run.parameters or {}, version=unsent.version)
            await self.prefect.call(
                "set the version to run", lambda client: client.update_flow_run(flow_run.id, parameters=parameters)
            )

    async def fail_unsent(self, unsent: Unsent, reason: str) -> None:
        """End a run whose flow run cannot be created (its workflow is gone, say)."""
        result = RunResult(
            id=unsent.execution_id,
            workflow=unsent.workflow_name,
            workflow_id=unsent.workflow_id,
            version=unsent.version,
            status=RunStatus.FAILED,
            error={"message": f"its flow run could not be created: {reason}"},
            trigger=unsent.trigger,
        )
        await self.executions.record_result(unsent.execution_id, result.model_dump())

    async def read(self, owner: str, run_id: str) -> RunResult:
        try:
            row = await self.executions.get(owner, run_id)
        except NotFound:
            # Started outside the API (Prefect UI, a schedule) and not picked up by a worker
            # yet: it is the owner's when the run names a workflow of theirs.
            return await self._not_started(owner, run_id)
        if (stored := _stored_result(row)) is not None:
            return stored
        if row.flow_run_id is None:  # accepted, its flow run not created yet
            return RunResult(
                id=run_id,
                workflow=row.workflow_name,
                workflow_id=row.workflow_id,
                version=row.version,
                status=row.status,
                trigger=row.trigger,
                retries=retries_of(row.trigger),
            )
        flow_run_id = row.flow_run_id
        flow_run = await self.prefect.call("read the run", lambda client: client.read_flow_run(uuid.UUID(flow_run_id)))
        state = flow_run.state
        status = STATUS_OF_STATE.get(state.type, RunStatus.RUNNING) if state else RunStatus.PENDING
        if status in FINAL_STATUSES:
            # A worker stores the result before it ends the flow run: it may have landed
            # since the row was read.
            row = await self.executions.get(owner, run_id)
            if (stored := _stored_result(row)) is not None:
                return stored
            # Ended without its worker storing the result (the worker died, or the run was
            # cancelled before it started): take Prefect's word, and keep it.
            result = await self._final_without_result(row, status, state)
            await self.executions.record_result(run_id, result.model_dump(), unless_stored=True)
            return result
        approvals = (
            await self.prefect.call("read approvals", lambda client: pending_approvals(flow_run_id, client))
            if status in (RunStatus.PAUSED, RunStatus.RUNNING) or is_delay_released(state)  # an approval's timeout
            else []
        )
        pause, approvals = split_pause(approvals)  # a pause waits in the approvals' gate
        return RunResult(
            id=run_id,
            workflow=row.workflow_name,
            workflow_id=row.workflow_id,
            version=row.version,
            status=status,
            nodes=await self._live_nodes(run_id),
            trigger=row.trigger,
            retries=retries_of(row.trigger),
            pending_approvals=approvals,
            pause=pause if status == RunStatus.PAUSED else None,
            started_at=flow_run.start_time.isoformat() if flow_run.start_time else None,
            flow_run_id=flow_run_id,
        )

    async def large_output(self, owner: str, run_id: str, ref: str) -> bytes:
        """A node output that events and the run result refer to by ``ref``, as the JSON its
        worker kept in the store (flows/large_outputs.py)."""
        if not is_ref(ref):
            await self.executions.get(owner, run_id)  # another owner's run: the same 404 as none
            raise NotFound(f"execution {run_id} has no output {ref!r}")
        return await self.executions.output(owner, run_id, ref)

    async def _not_started(self, owner: str, run_id: str) -> RunResult:
        try:
            run_uuid = uuid.UUID(run_id)
        except ValueError:
            raise NotFound(f"execution {run_id} not found") from None
        try:
            flow_run = await self.prefect.call("read the run", lambda client: client.read_flow_run(run_uuid))
        except NotFound:
            # The same answer as for another owner's run: the id tells nothing about others.
            raise NotFound(f"execution {run_id} not found") from None
        parameters = flow_run.parameters or {}
        if parameters.get("owner") != owner or not parameters.get("workflow_id"):
            raise NotFound(f"execution {run_id} not found")
        workflow = await self.workflows.get(owner, str(parameters["workflow_id"]))
        state = flow_run.state
        return RunResult(
            id=run_id,
            workflow=workflow.name,
            workflow_id=workflow.id,
            version=parameters.get("version"),
            status=STATUS_OF_STATE.get(state.type, RunStatus.PENDING) if state else RunStatus.PENDING,
            trigger=parameters.get("trigger") or {},
            flow_run_id=run_id,
        )

    async def _final_without_result(self, row: ExecutionRow, status: str, state: State | None) -> RunResult:
        """A run Prefect says has ended and whose worker stored no result: its status and
        message from Prefect, its nodes from the event log. Never the state's data."""
        message = None if status == RunStatus.COMPLETED else (state.message if state else None) or status
        return RunResult(
            id=row.id,
            workflow=row.workflow_name,
            workflow_id=row.workflow_id,
            version=row.version,
            status=status,
            error={"message": message} if message else None,
            trigger=row.trigger,
            retries=retries_of(row.trigger),
            nodes=await self._live_nodes(row.id),
            flow_run_id=row.flow_run_id,
        )

    async def _live_nodes(self, run_id: str) -> dict[str, Any]:
        """Top-level node states of a run in progress, folded from its event log."""
        nodes: dict[str, Any] = {}
        after = 0
        while True:
            batch = await self.event_log.read(run_id, after=after, limit=1000)
            for event in batch:
                status = NODE_STATUS_OF_EVENT.get(cast(EventType, event.type))  # a member hashes as its string
                node_id = event.data.get("node_id")
                if status is None or node_id is None or event.data.get("path"):
                    continue
                node = nodes.setdefault(
                    node_id,
                    {
                        "status": status,
                        "output": None,
                        "error": None,
                        "attempts": 0,
                        "cached": False,
                        "started_at": None,
                        "ended_at": None,
                    },
                )
                node["status"] = status
                if event.type == EventType.NODE_STARTED:
                    node["started_at"] = event.data.get("timestamp")
                elif event.type in (EventType.NODE_COMPLETED, EventType.NODE_CACHED, EventType.NODE_ERROR):
                    node.update(
                        output=event.data.get("output"),
                        error=event.data.get("error"),
                        attempts=event.data.get("attempts", 0),
                        cached=event.type == EventType.NODE_CACHED,
                        ended_at=event.data.get("timestamp"),
                    )
            if len(batch) < 1000:
                return nodes
            after = batch[-1].seq

    async def page(
        self, owner: str, where: ExecutionFilter, *, limit: int, cursor: str | None = None
    ) -> Page[ExecutionRow]:
        """A page of an owner's runs, newest first (``store.lists``), the stored status of
        runs in progress refreshed from Prefect. For a status not final the page holds those
        of its rows in that status: fewer than ``limit``, and the next page goes on after."""
        page = await executions_page(self.executions.sessions, owner, where, limit=limit, cursor=cursor)
        await self._refresh(page.items)
        if where.status is None or where.status in FINAL_STATUSES:
            return page
        return Page([row for row in page.items if row.status == where.status], page.next_cursor)

    async def _refresh(self, rows: builtins.list[ExecutionRow]) -> None:
        """Runs in progress take the status Prefect has for them (in place)."""
        # Runs accepted and not created yet are pending, as stored.
        live = [row for row in rows if row.status not in FINAL_STATUSES and row.flow_run_id is not None]
        if live:
            flow_runs = await self.prefect.call(
                "read run states",
                lambda client: client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        id=FlowRunFilterId(any_=[uuid.UUID(r.flow_run_id) for r in live if r.flow_run_id])
                    ),
                    limit=len(live),
                ),
            )
            states = {str(f.id): f.state for f in flow_runs}
            for row in live:
                state = states.get(row.flow_run_id or "")
                if state is not None:
                    row.status = STATUS_OF_STATE.get(state.type, row.status)

    async def cancel(self, owner: str, run_id: str) -> str:
        status = await self._cancel(owner, run_id)
        if self.audit is not None:
            await self.audit.append(
                owner=owner,
                actor=owner,
                action="execution.cancel",
                target_type="execution",
                target_id=run_id,
                details={"status": status},
            )
        return status

    async def _cancel(self, owner: str, run_id: str) -> str:
        row = await self.executions.get(owner, run_id)
        if row.status in FINAL_STATUSES:
            raise Conflict(f"execution {run_id} has already ended ({row.status})")
        if row.flow_run_id is None:
            # Accepted, its flow run not created: cancelled in the store, no drainer creates
            # it now (one creating it at this moment cancels the flow run it made).
            ended = RunResult(
                id=run_id,
                workflow=row.workflow_name,
                workflow_id=row.workflow_id,
                version=row.version,
                status=RunStatus.CANCELLED,
                error={"message": "cancelled before it started"},
                trigger=row.trigger,
            )
            if await self.outbox.cancel_unsent(run_id, ended.model_dump()):
                return RunStatus.CANCELLED
            row = await self.executions.get(owner, run_id)  # its flow run was created meanwhile
        flow_run_id = flow_run_of(row)
        flow_run = await self.prefect.call("read the run", lambda client: client.read_flow_run(flow_run_id))
        if flow_run.state and flow_run.state.is_final():
            raise Conflict(f"execution {run_id} has already ended ({flow_run.state.name})")
        if flow_run.state and flow_run.state.type in (StateType.SCHEDULED, StateType.PENDING):
            # No worker runs it yet: nothing would answer a Cancelling, so end it here.
            await self.prefect.call(
                "cancel the run",
                lambda client: mark_cancelled(client, flow_run_id, "cancelled before it started"),
            )
            return RunStatus.CANCELLED
        # The run's worker watches its runs' states and stops this one within a second.
        await self.prefect.call("cancel the run", lambda client: request_cancellation(client, flow_run_id))
        return CANCELLING

    async def resume(
        self, owner: str, run_id: str, node_id: str, path: builtins.list[int] | None, values: dict[str, Any]
    ) -> dict[str, str]:
        flow_run_id = str(await self.flow_run_id(owner, run_id))
        answer = await self.prefect.call(
            "answer the approval",
            lambda client: resume_approval(
                flow_run_id, node_id, path, values, decided_by=owner, client=client, signer=self.decisions
            ),
        )
        if answer.status == "refused":
            raise Invalid(answer.message, [{"code": "refused", **i} for i in answer.issues])
        if answer.status == "not_waiting":
            raise Conflict(answer.message)
        if self.audit is not None:
            approved = values.get("approved")
            await self.audit.append(
                owner=owner,
                actor=owner,
                action="approval.decide",
                target_type="execution",
                target_id=run_id,
                # The decision, never the form's values (they may be anything).
                details={
                    "node_id": node_id,
                    "path": list(path or []),
                    "approved": approved if isinstance(approved, bool) else None,
                    "answer": answer.status,
                },
            )
        return {"status": answer.status, "message": answer.message}

    async def retry(self, owner: str, run_id: str, version: int | None) -> str:
        """Execute a failed or cancelled run again, the same run: its worker restores every
        node that completed with the same resolved configuration and runs the rest. With
        ``version``, that version's canvas runs (nodes it left unchanged are reused). A run
        that ended before its flow run was known (cancelled, or failed for want of one) goes
        back to the outbox, and its flow run is created as an accepted run's is."""
        row = await self.executions.get(owner, run_id)
        if row.flow_run_id is None:
            if row.status not in (RunStatus.CANCELLED, RunStatus.FAILED):
                raise Conflict(f"execution {run_id} is {row.status}: only a failed or cancelled run can be retried")
            version = await self._version_to_retry(owner, row, version)
            retries = await self.executions.reopen(run_id, version, retried_by=owner, resend=True)
            if retries is not None:
                await self._announce_retry(owner, run_id, retries, version)
                self.accepted()  # the drainer creates its flow run
                return RunStatus.PENDING
            # A late flow run of it was refused and recorded meanwhile: retried through it.
            row = await self.executions.get(owner, run_id)
        flow_run = await self._settled_flow_run(row)
        state = flow_run.state
        if state is None or state.type not in RETRYABLE_STATES:
            status = STATUS_OF_STATE.get(state.type, row.status) if state else row.status
            raise Conflict(f"execution {run_id} is {status}: only a failed or cancelled run can be retried")
        version = await self._version_to_retry(owner, row, version)
        if version != row.version:
            parameters = dict(flow_run.parameters, version=version)
            await self.prefect.call(
                "set the version to run", lambda client: client.update_flow_run(flow_run.id, parameters=parameters)
            )
        retries = await self.executions.reopen(run_id, version, retried_by=owner)
        await self._announce_retry(owner, run_id, retries or 0, version)
        await self.prefect.call(
            "schedule the run again",
            lambda client: schedule_again(client, flow_run.id, f"retried by {owner} through FlowMaestro's API"),
        )
        return RunStatus.PENDING

    async def _version_to_retry(self, owner: str, row: ExecutionRow, version: int | None) -> int:
        """The version a retry runs: ``version`` when given (422 when the run's inputs do not
        fit it), else the run's own."""
        version = version or row.version
        if version != row.version:
            saved = await self.workflows.version(owner, row.workflow_id, version)
            await self.compiler.checked_inputs(
                saved, row.inputs, refused=f"the run's inputs do not fit version {version}"
            )
        return version

    async def _announce_retry(self, owner: str, run_id: str, retries: int, version: int) -> None:
        """Before the run is scheduled again: a stream opened from now on does not end at the
        previous execution's final event, and the worker numbers its events after this one."""
        await self.outcomes.dismiss_run(run_id)
        last = await self.event_log.last_seq(run_id)
        await self.event_log.append(
            [
                RunEvent(
                    last + 1,
                    EventType.EXECUTION_RETRIED,
                    run_id,
                    utcnow().isoformat(),
                    data={"status": RunStatus.PENDING, "retries": retries, "retried_by": owner, "version": version},
                )
            ]
        )

    async def _settled_flow_run(self, row: ExecutionRow, wait_s: float = 10.0) -> Any:
        """The run's flow run. When the store has the run's result but Prefect still has it
        running (its worker stored the result and is ending the flow run, or refused a late
        flow run of a run already ended), once Prefect has caught up: a client that saw the
        run end may retry it at once."""
        deadline = asyncio.get_running_loop().time() + wait_s
        flow_run_id = flow_run_of(row)
        while True:
            flow_run = await self.prefect.call("read the run", lambda client: client.read_flow_run(flow_run_id))
            state = flow_run.state
            if (
                row.status not in FINAL_STATUSES
                or state is None
                or state.type != StateType.RUNNING
                or asyncio.get_running_loop().time() > deadline
            ):
                return flow_run
            await asyncio.sleep(0.2)


def flow_run_of(row: ExecutionRow) -> uuid.UUID:
    """The flow run of a run; 409 while the run is accepted and its flow run not created yet."""
    if row.flow_run_id is None:
        raise Conflict(f"execution {row.id} is {row.status}: its flow run is not created yet; try again shortly")
    return uuid.UUID(row.flow_run_id)


def _stored_result(row: ExecutionRow) -> RunResult | None:
    """The result the run's worker stored once it ended, if it has."""
    if row.result is None or row.status not in FINAL_STATUSES:
        return None
    return RunResult.of(row.result, trigger=row.trigger, retries=retries_of(row.trigger), flow_run_id=row.flow_run_id)
