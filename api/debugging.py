"""The debugging loop's routes: node executions, rerun from a node, test one node.

- ``GET /api/executions/{id}/nodes``: every node execution of a run (body nodes included,
  with their ``path``) in start order, a page at a time (``Link: <...>; rel="next"``), as its
  worker recorded them (``store.node_executions``).
- ``POST /api/executions/{id}/rerun``: a new run of the workflow's deployment whose journal
  the API seeded from the source run (``api.reruns``): what must execute does, the rest is
  restored, pinned outputs are taken as given.
- ``POST /api/workflows/{id}/nodes/{node_id}/test``: a run that executes that one node on a
  worker; its outcome when the run ends within ``TEST_WAIT_S``, else 202.

The API never executes a node: both start runs through ``RunService.start``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Owner
from api.reruns import check_node, check_pinned, node_test_seed, rerun_seed
from api.runs import RunService, flow_run_of
from api.schemas import ErrorBody, ExecutionAccepted, RequestBody
from builder.plan import TOP
from flows.event_log import EventLog
from flows.events import FINAL_EVENT_TYPES, utcnow
from store.errors import Conflict, Invalid, NotFound
from store.node_executions import NodeExecution, NodeExecutions
from store.queries import FINAL_STATUSES, NodeOutcomes
from store.vocabulary import RunStatus

MAX_PAGE = 500

router = APIRouter(tags=["debugging"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}


class LogLine(BaseModel):
    at: str
    level: str
    message: str


class NodeExecutionOut(BaseModel):
    node_id: str
    path: list[int]
    type: str
    status: str
    attempts: int
    input: dict[str, Any] | None = Field(description="The resolved configuration, secrets redacted.")
    output: Any = Field(
        None, description="The output, or its large-output reference ({truncated, bytes, preview, ref})."
    )
    error: dict[str, Any] | None
    started_at: str
    ended_at: str | None
    duration_ms: int | None
    restored: bool = Field(description="Restored from the run's journal (or a rerun's source): nothing executed.")
    logs: list[LogLine]


class RerunBody(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"from_node": "summarize"}, {"from_node": "b", "pinned": {"a": 1}}]},
    )
    from_node: str = Field(min_length=1, description="This node and everything downstream execute again.")
    pinned: dict[str, Any] = Field(
        default_factory=dict, description="Top-level nodes that take these outputs instead of executing."
    )
    inputs: dict[str, Any] | None = Field(None, description="Inputs replacing the source run's (the others stay).")
    version: int | None = Field(None, ge=1, description="Run this version; the source run's by default.")


class NodeTestBody(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": {"who": "Ada"}, "pinned": {"fetch": {"status": 200}}}]},
    )
    inputs: dict[str, Any] = Field(default_factory=dict, description="The run's inputs (declared defaults fill in).")
    pinned: dict[str, Any] = Field(
        default_factory=dict, description="Outputs of upstream nodes the node's templates read."
    )
    version: int | None = Field(None, ge=1, description="The version to test; the latest by default.")


class NodeTestOut(BaseModel):
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    duration_ms: int | None = None
    logs: list[LogLine] = Field(default_factory=list)
    execution_id: str


class DebugService:
    def __init__(
        self,
        runs: RunService,
        outcomes: NodeOutcomes,
        node_executions: NodeExecutions,
        event_log: EventLog,
        *,
        test_wait_s: float = 60.0,
    ):
        """``test_wait_s``: how long a node test waits for its run to end before its 202
        (``FLOWMAESTRO_NODE_TEST_WAIT_S``)."""
        self.test_wait_s = test_wait_s
        self.runs = runs
        self.outcomes = outcomes
        self.node_executions = node_executions
        self.event_log = event_log

    async def rerun(self, owner: str, source_id: str, body: RerunBody) -> str:
        row = await self.runs.executions.get(owner, source_id)
        status = (await self.runs.read(owner, source_id)).status
        if status not in FINAL_STATUSES:
            raise Conflict(
                f"execution {source_id} has not ended ({status}): rerun it once it has",
                [{"field": "execution_id", "code": "not_ended", "message": f"the run is {status}"}],
            )
        saved = await self._version(owner, row.workflow_id, body.version or row.version)
        plan = await self.runs.compiler.plan_of(saved)
        check_node(plan, body.from_node, "from_node")
        check_pinned(plan, body.pinned)
        source = await self.outcomes.of_run(await self._journal_of(owner, source_id))
        _start, entries = rerun_seed(plan, body.from_node, source, body.pinned, utcnow())
        journal = str(uuid.uuid4())
        await self.outcomes.save(journal, entries, workflow_id=row.workflow_id, owner=owner)
        inputs = {**row.inputs, **(body.inputs or {})}
        trigger = {"type": "rerun", "execution_id": source_id, "from_node": body.from_node}
        return await self.runs.start(
            owner=owner,
            workflow_id=row.workflow_id,
            version=saved.version,
            inputs=inputs,
            trigger=trigger,
            check_credentials=True,
            journal=journal,
            actor=owner,
        )

    async def _journal_of(self, owner: str, execution_id: str) -> str:
        """Where a run's journal is: its own id, or the one its API seeded (a rerun), as the
        run was accepted; for a run accepted before the store kept it, its flow run's."""
        row = await self.runs.executions.get(owner, execution_id)
        if row.start_request is not None:
            journal = row.start_request.get("journal")
        else:
            flow_run_id = flow_run_of(row)
            flow_run = await self.runs.prefect.call("read the run", lambda client: client.read_flow_run(flow_run_id))
            journal = (flow_run.parameters or {}).get("journal")
        return journal if isinstance(journal, str) and journal else execution_id

    async def _version(self, owner: str, workflow_id: str, version: int | None) -> Any:
        await self.runs.workflows.get(owner, workflow_id)  # 404 for a workflow that is gone
        try:
            return await self.runs.workflows.version(owner, workflow_id, version)
        except NotFound as exc:
            raise Invalid(
                exc.message, [{"field": "version", "code": "unknown_version", "message": exc.message}]
            ) from None

    async def test_node(self, owner: str, workflow_id: str, node_id: str, body: NodeTestBody) -> NodeTestOut | str:
        saved = await self._version(owner, workflow_id, body.version)
        plan = await self.runs.compiler.plan_of(saved)
        check_node(plan, node_id, "node_id")
        if plan.nodes[node_id].scope != TOP:
            raise Invalid(
                f"node_id: {node_id!r} is inside container {plan.nodes[node_id].scope!r}: test the container",
                [{"field": "node_id", "code": "not_top_level", "message": "only top-level nodes are tested alone"}],
            )
        check_pinned(plan, body.pinned)
        journal = str(uuid.uuid4())
        entries = node_test_seed(plan, node_id, body.pinned, utcnow())
        await self.outcomes.save(journal, entries, workflow_id=workflow_id, owner=owner)
        run_id = await self.runs.start(
            owner=owner,
            workflow_id=workflow_id,
            version=saved.version,
            inputs=body.inputs,
            trigger={"type": "test", "node_id": node_id},
            check_credentials=True,
            journal=journal,
            actor=owner,
        )
        if not await self._ended_within(run_id, self.test_wait_s):
            return run_id
        found = (await self.node_executions.page(run_id, node_id=node_id, limit=1)).items
        if found:
            e = found[0]
            return NodeTestOut(
                status=e.status,
                output=e.output,
                error=e.error,
                duration_ms=e.duration_ms,
                logs=[LogLine(**line) for line in e.logs],
                execution_id=run_id,
            )
        # It never started (its upstream edges' conditions did not hold, or the run was refused).
        result = await self.runs.read(owner, run_id)
        node = result.nodes.get(node_id)
        status = node.status if node is not None else result.status
        return NodeTestOut(status=str(status), error=result.error, execution_id=run_id)

    async def _ended_within(self, run_id: str, wait_s: float) -> bool:
        """Whether the run's final event comes within ``wait_s``, read from its event log."""
        deadline = time.monotonic() + wait_s
        last = 0
        try:
            async with asyncio.timeout(wait_s):
                while time.monotonic() < deadline:
                    async for event in self.event_log.follow(run_id, after=last, idle_timeout=5.0):
                        last = event.seq
                        if event.type in FINAL_EVENT_TYPES:
                            return True
        except TimeoutError:
            return False
        return False


def get_debugging(request: Request) -> DebugService:
    service: DebugService = request.app.state.debugging
    return service


DebugDep = Annotated[DebugService, Depends(get_debugging)]


@router.get("/api/executions/{execution_id}/nodes", response_model=list[NodeExecutionOut], responses=ERRORS)
async def list_node_executions(
    execution_id: str,
    request: Request,
    response: Response,
    owner: Owner,
    debugging: DebugDep,
    node_id: str | None = Query(None, description="Only this node's executions."),
    status: str | None = Query(
        None, description="Only executions that ended with this status (completed, cached, failed)."
    ),
    limit: int = Query(50, ge=1, le=MAX_PAGE, description="At most this many (1 to 500)."),
    cursor: str | None = Query(None, description="Where the previous page ended (its Link header's next)."),
) -> list[NodeExecutionOut]:
    """Every node execution of the run in start order, body nodes included: its resolved
    input (secrets redacted), output (or large-output reference), error, attempts, timings,
    ``restored`` and log lines. The next page, when there is one: ``Link: <...>; rel="next"``."""
    await debugging.runs.executions.get(owner, execution_id)
    page = await debugging.node_executions.page(
        execution_id, node_id=node_id, status=status, limit=limit, cursor=cursor
    )
    if page.next_cursor is not None:
        query = {k: v for k, v in {"node_id": node_id, "status": status}.items() if v}
        query.update(limit=str(limit), cursor=page.next_cursor)
        response.headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return [_out(e) for e in page.items]


def _out(e: NodeExecution) -> NodeExecutionOut:
    return NodeExecutionOut.model_validate(e.to_dict())


@router.post(
    "/api/executions/{execution_id}/rerun", status_code=202, response_model=ExecutionAccepted, responses=ERRORS
)
async def rerun_execution(execution_id: str, body: RerunBody, owner: Owner, debugging: DebugDep) -> ExecutionAccepted:
    """A new run of an ended run's workflow from ``from_node``: it and everything downstream
    execute (a node inside a container: its whole top-level container), every other node that
    completed in the source run is restored from it, ``pinned`` nodes take the given output.
    Its trigger: ``{type: "rerun", execution_id, from_node}``. 409 while the source runs."""
    run_id = await debugging.rerun(owner, execution_id, body)
    return ExecutionAccepted(execution_id=run_id, status=RunStatus.PENDING, links=debugging.runs.links(run_id))


@router.post(
    "/api/workflows/{workflow_id}/nodes/{node_id}/test",
    response_model=NodeTestOut,
    responses=ERRORS | {202: {"model": ExecutionAccepted, "description": "The run goes on: follow it."}},
)
async def test_node(
    workflow_id: str, node_id: str, owner: Owner, debugging: DebugDep, body: NodeTestBody | None = None
) -> Any:
    """Run one top-level node on a worker, its templates resolved against ``inputs`` and the
    ``pinned`` upstream outputs (the other nodes take them, or null, without executing): 200
    with its outcome when the run ends within 60 s, else 202 with the run to follow."""
    outcome = await debugging.test_node(owner, workflow_id, node_id, body or NodeTestBody())
    if isinstance(outcome, str):
        accepted = ExecutionAccepted(
            execution_id=outcome, status=RunStatus.RUNNING, links=debugging.runs.links(outcome)
        )
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    return outcome
