"""A workflow's versions: the list, what changed between two, and a rollback (a new version
whose canvas is an earlier one's: history is never rewritten)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.auth import Owner
from api.deps import CompilerDep, RunsDep, SchedulesDep, WorkflowsDep
from api.library_schemas import CanvasDiff, RollbackBody, VersionOut
from api.schemas import CanvasBody, ErrorBody, WorkflowSaved
from api.workflows import update_workflow
from builder.diff import diff_canvases
from store.errors import Conflict, Invalid, NotFound
from store.library import WorkflowHistory

router = APIRouter(prefix="/api/workflows", tags=["workflows"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}


def get_history(request: Request) -> WorkflowHistory:
    return WorkflowHistory(request.app.state.sessions)


HistoryDep = Annotated[WorkflowHistory, Depends(get_history)]


@router.get("/{workflow_id}/versions", response_model=list[VersionOut], responses=ERRORS)
async def list_versions(workflow_id: str, owner: Owner, history: HistoryDep) -> list[VersionOut]:
    """Every version, oldest first."""
    return [
        VersionOut(
            version=v.version,
            created_at=v.created_at,
            created_by=owner,
            plan_hash=v.plan_hash,
            nodes=len(v.canvas.get("nodes") or []),
        )
        for v in await history.versions(owner, workflow_id)
    ]


@router.get("/{workflow_id}/diff", response_model=CanvasDiff, responses=ERRORS)
async def diff_versions(
    workflow_id: str,
    owner: Owner,
    workflows: WorkflowsDep,
    from_: Annotated[int, Query(alias="from", ge=1, description="The version compared against.")],
    to: Annotated[int | None, Query(ge=1, description="The version compared; the latest when absent.")] = None,
) -> CanvasDiff:
    """What changed from version ``from`` to version ``to``: nodes and edges by id, inputs and
    variables by name, settings, output, name and description by field path. Positions,
    sizes and other drawing keys are not changes."""
    before = await _version(workflows, owner, workflow_id, from_, "from")
    after = await _version(workflows, owner, workflow_id, to, "to")
    found = await asyncio.to_thread(diff_canvases, before.canvas, after.canvas)  # large canvases: off the loop
    return CanvasDiff.model_validate({"from_version": before.version, "to_version": after.version, **found})


@router.post("/{workflow_id}/rollback", status_code=201, response_model=WorkflowSaved, responses=ERRORS)
async def rollback(
    workflow_id: str,
    body: RollbackBody,
    owner: Owner,
    workflows: WorkflowsDep,
    runs: RunsDep,
    compiler: CompilerDep,
    schedules: SchedulesDep,
) -> Any:
    """A new version whose canvas is version ``version``'s (saved like any new version: its
    deployment follows, its warnings are answered). Rolling back to the canvas of the latest
    version makes nothing: 409."""
    target = await _version(workflows, owner, workflow_id, body.version, "version", where="body")
    latest = await workflows.version(owner, workflow_id)
    if latest.canvas == target.canvas:
        raise Conflict(
            f"the latest version ({latest.version}) has the canvas of version {body.version} already",
            [{"code": "unchanged", "field": "body.version", "message": "the latest version is that canvas already"}],
        )
    saved = await update_workflow(
        workflow_id, CanvasBody(canvas=target.canvas), owner, workflows, runs, compiler, schedules
    )
    if runs.audit is not None:  # after the save's own entry (workflow.save), in a transaction of its own
        await runs.audit.append(
            owner=owner,
            actor=owner,
            action="workflow.rollback",
            target_type="workflow",
            target_id=workflow_id,
            details={"to_version": body.version, "version": saved.version},
        )
    return saved


async def _version(
    workflows: WorkflowsDep, owner: str, workflow_id: str, version: int | None, field: str, where: str = "query"
) -> Any:
    await workflows.get(owner, workflow_id)  # 404 for the workflow before the version
    try:
        return await workflows.version(owner, workflow_id, version)
    except NotFound as exc:
        raise Invalid(
            exc.message, [{"code": "no_such_version", "field": f"{where}.{field}", "message": exc.message}]
        ) from None
