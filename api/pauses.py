"""Pausing and resuming a live run (``POST /api/executions/{id}/pause``, and ``resume``
without ``node_id``). The run pauses itself at its next node boundary (``flows.pauses``):
this module only records the request, and answers the pause once the run waits in it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import Owner
from api.deps import RunsDep
from api.runs import RunService, flow_run_of
from api.schemas import ErrorBody, PauseAccepted
from flows.approvals import pending_approvals, resume_approval
from flows.pauses import request_pause, split_pause, withdraw_requests
from store.errors import Conflict, Invalid
from store.queries import FINAL_STATUSES
from store.vocabulary import RunStatus

router = APIRouter(tags=["executions"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}
PAUSING = "pausing"
"""The pause route's answer while the run's running nodes finish: not a run status (the run
is ``running`` until it has paused, then ``paused``)."""


async def _audit(runs: RunService, owner: str, action: str, run_id: str, details: dict[str, Any]) -> None:
    """Kept by Prefect, so recorded once Prefect took it (``store.audit``)."""
    if runs.audit is not None:
        await runs.audit.append(
            owner=owner, actor=owner, action=action, target_type="execution", target_id=run_id, details=details
        )


async def _live(runs: RunService, owner: str, run_id: str) -> Any:
    """The run's flow run, once it is the owner's and has not ended (else 404, 409; 409 too
    while it is accepted and its flow run not created yet)."""
    row = await runs.executions.get(owner, run_id)
    if row.status in FINAL_STATUSES:
        raise Conflict(f"execution {run_id} has already ended ({row.status})")
    flow_run_id = flow_run_of(row)
    flow_run = await runs.prefect.call("read the run", lambda client: client.read_flow_run(flow_run_id))
    if flow_run.state is not None and flow_run.state.is_final():
        raise Conflict(f"execution {run_id} has already ended ({flow_run.state.name})")
    return flow_run


@router.post("/api/executions/{execution_id}/pause", status_code=202, response_model=PauseAccepted, responses=ERRORS)
async def pause_execution(execution_id: str, owner: Owner, runs: RunsDep) -> PauseAccepted:
    """Pause a run at its next node boundary: no new node starts, the running ones finish,
    then the run is ``paused`` (``pause: {reason: "manual", by}``, event ``execution:paused``).
    Answers ``pausing``, or ``paused`` when it already waits in a pause. 409 once it has ended."""
    flow_run_id = (await _live(runs, owner, execution_id)).id
    pending = await runs.prefect.call("read the pauses", lambda client: pending_approvals(str(flow_run_id), client))
    if split_pause(pending)[0] is not None:
        return PauseAccepted(status=RunStatus.PAUSED, message="the run is paused already")
    await runs.prefect.call("ask the run to pause", lambda client: request_pause(client, flow_run_id, owner))
    await _audit(runs, owner, "execution.pause", execution_id, {})
    return PauseAccepted(
        status=PAUSING, message="the run pauses once the nodes running now have finished; no other node starts"
    )


async def resume_paused(runs: RunService, owner: str, run_id: str) -> dict[str, str]:
    """``resume`` without ``node_id``: continue a run paused by a person or a breakpoint (to
    its next breakpoint), or withdraw a pause asked for that has not taken effect yet."""
    flow_run_id = (await _live(runs, owner, run_id)).id
    pending = await runs.prefect.call("read the pauses", lambda client: pending_approvals(str(flow_run_id), client))
    pauses = [p for p in pending if isinstance(p.get("pause"), dict)]
    if pauses:
        target = pauses[0]
        answer = await runs.prefect.call(
            "resume the run",
            lambda client: resume_approval(
                str(flow_run_id),
                target["node_id"],
                target["path"],
                {"approved": True},
                decided_by=owner,
                client=client,
                signer=runs.decisions,
            ),
        )
        if answer.status != "accepted":
            raise Conflict(answer.message)
        message = answer.message.replace("approval answered", "resumed")
        await _audit(runs, owner, "execution.resume", run_id, {"reason": target["pause"].get("reason")})
        return {"status": answer.status, "message": message}
    withdrawn = await runs.prefect.call("withdraw the pause", lambda client: withdraw_requests(client, flow_run_id))
    if withdrawn:
        await _audit(runs, owner, "execution.resume", run_id, {"reason": "withdrawn"})
        return {"status": "accepted", "message": "the pause asked for was withdrawn before it took effect"}
    if pending:
        nodes = ", ".join(sorted({str(p["node_id"]) for p in pending}))
        raise Invalid(
            f"the run is not paused but waits for approvals ({nodes}): give node_id and input to answer one",
            [{"code": "invalid_request", "field": "body.node_id", "message": f"required: approvals wait ({nodes})"}],
        )
    raise Conflict(f"execution {run_id} is not paused")
