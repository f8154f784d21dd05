"""Workflow CRUD with immutable versions; every save updates the workflow's deployment."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response

from api.auth import Owner
from api.deps import CompilerDep, RunsDep, SchedulesDep, WorkflowsDep
from api.pagination import NO_NUL, Paged, link_next, list_responses
from api.schemas import (
    CanvasBody,
    ErrorBody,
    IssueOut,
    ValidationReport,
    WorkflowPublic,
    WorkflowSaved,
    WorkflowSummary,
)
from api.workflow_metadata import CatalogDep
from builder.compiler import CompileResult
from node_handlers.credentials import missing_credentials
from store.errors import Invalid, NotFound, Unavailable
from store.queries import SavedVersion, Workflows

log = logging.getLogger("flowmaestro.api.workflows")
router = APIRouter(prefix="/api/workflows", tags=["workflows"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}


def subworkflow_references(canvas: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The saved workflows a canvas's subworkflow nodes run, with their pinned versions."""
    found = []
    for node in canvas.get("nodes") or []:
        data = node.get("data") or {} if isinstance(node, dict) else {}
        if node.get("type") == "subworkflow" and isinstance(data.get("workflow"), str):
            version = data.get("version")
            found.append((data["workflow"], version if isinstance(version, int) else None))
    return found


async def refuse_cycles(workflows: Workflows, owner: str, workflow_id: str, canvas: dict[str, Any]) -> None:
    """422 when saving ``canvas`` as ``workflow_id`` would let it run itself through
    sub-workflows (the cycle is named); references to no saved workflow are left to the run."""
    path = [workflow_id]

    async def visit(references: list[tuple[str, int | None]], seen: set[tuple[str, int | None]]) -> None:
        for reference in references:
            child, version = reference
            if child == workflow_id:
                names = " -> ".join(path + [child])
                raise Invalid(
                    f"sub-workflow cycle: {names}",
                    [
                        {
                            "code": "subworkflow_cycle",
                            "field": "nodes",
                            "message": f"this workflow would run itself: {names}",
                        }
                    ],
                )
            if reference in seen:
                continue
            seen.add(reference)
            try:
                saved = await workflows.version(owner, child, version)
            except NotFound:
                continue
            path.append(child)
            await visit(subworkflow_references(saved.canvas), seen)
            path.pop()

    await visit(subworkflow_references(canvas), set())


async def _saved(saved: SavedVersion, result: CompileResult, runs: RunsDep) -> WorkflowSaved:
    warnings = [IssueOut(**i.to_dict()) for i in result.warnings]
    if runs.credentials is not None:
        missing = await missing_credentials(runs.credentials, saved.owner, saved.canvas, severity="warning")
        warnings += [IssueOut(**issue) for issue in missing]
    assert result.plan is not None
    runs.compiler.remember(saved, result.plan)
    warnings += await _deploy(runs.sync_deployment(saved, result.plan), saved.workflow_id)
    return WorkflowSaved(id=saved.workflow_id, version=saved.version, name=saved.name, warnings=warnings)


async def _deploy(deployment: Awaitable[object], workflow_id: str) -> list[IssueOut]:
    """Await the deployment's creation or update: nothing, or the ``deployment_pending``
    warning when Prefect did not answer."""
    try:
        await deployment
    except Unavailable as exc:
        # The version is saved (nothing is lost); its deployment follows at the first run,
        # or at the next save, of this canvas or another.
        log.warning("deployment of workflow %s not updated: %s", workflow_id, exc.message)
        message = f"{exc.message}; the Prefect deployment is updated at the next run or save"
        return [IssueOut(code="deployment_pending", severity="warning", message=message)]
    return []


@router.post("", status_code=201, response_model=WorkflowSaved, responses=ERRORS)
async def create_workflow(
    body: CanvasBody, owner: Owner, workflows: WorkflowsDep, runs: RunsDep, compiler: CompilerDep
) -> WorkflowSaved:
    """Save a new workflow (version 1) and its Prefect deployment. An invalid canvas
    answers 422 with every issue, one too large to compile 413."""
    canvas = body.document()
    result = await compiler.valid(canvas)
    assert result.plan is not None
    saved = await workflows.create(owner, result.plan.name, canvas, result.plan.hash, actor=owner)
    try:
        return await _saved(saved, result, runs)
    except Exception:
        # Prefect refused the deployment (Prefect down is a warning, not this): nothing is
        # left half-saved, the workflow goes and its name is free again.
        await workflows.delete(owner, saved.workflow_id, actor=owner)
        raise


@router.get("", response_model=list[WorkflowSummary], responses=list_responses(ERRORS))
async def list_workflows(
    request: Request,
    response: Response,
    owner: Owner,
    catalog: CatalogDep,
    paged: Paged,
    q: str | None = Query(
        None, max_length=200, pattern=NO_NUL, description="Words in the name or the description (any case)."
    ),
    tag: str | None = Query(None, max_length=64, pattern=NO_NUL, description="Workflows with this tag."),
    status: Literal["active", "draft", "archived"] | None = Query(None, description="Workflows in this status."),
) -> list[WorkflowSummary]:
    """The owner's workflows, oldest first, a page at a time (the next in the ``Link`` header)."""
    page = await catalog.page(owner, q=q, tag=tag, status=status, limit=paged.limit, cursor=paged.cursor)
    link_next(request, response, page.next_cursor)
    return [WorkflowSummary.model_validate(meta, from_attributes=True) for meta in page.items]


@router.post("/validate", response_model=ValidationReport, responses=ERRORS)
async def validate_workflow(body: CanvasBody, owner: Owner, compiler: CompilerDep) -> ValidationReport:
    """Compile without saving: every issue, and the plan when valid (413 when the canvas is
    too large to compile)."""
    result = await compiler.compile(body.document())
    plan = await asyncio.to_thread(result.plan.to_dict) if result.plan else None  # (large: off the loop too)
    return ValidationReport(valid=result.ok, issues=[IssueOut(**i.to_dict()) for i in result.issues], plan=plan)


@router.get("/{workflow_id}", response_model=WorkflowPublic, responses=ERRORS)
async def read_workflow(
    workflow_id: str, owner: Owner, workflows: WorkflowsDep, catalog: CatalogDep, version: int | None = None
) -> WorkflowPublic:
    workflow = await catalog.get(owner, workflow_id)
    found = await workflows.version(owner, workflow_id, version)
    return WorkflowPublic(
        id=workflow.id,
        name=workflow.name,
        latest_version=workflow.latest_version,
        created_at=workflow.created_at,
        updated_at=workflow.updated_at,
        description=workflow.description,
        tags=workflow.tags,
        status=workflow.status,  # type: ignore[arg-type]
        version=found.version,
        canvas=found.canvas,
        plan_hash=found.plan_hash,
    )


@router.put("/{workflow_id}", response_model=WorkflowSaved, responses=ERRORS)
async def update_workflow(
    workflow_id: str,
    body: CanvasBody,
    owner: Owner,
    workflows: WorkflowsDep,
    runs: RunsDep,
    compiler: CompilerDep,
    schedules: SchedulesDep,
) -> WorkflowSaved:
    """Save a new version; earlier versions stay readable and runnable. The workflow's
    schedules stay; one whose inputs the new version refuses is named in a warning."""
    before = await workflows.get(owner, workflow_id)  # 404 before 422: the workflow must be there
    canvas = body.document()
    result = await compiler.valid(canvas)
    assert result.plan is not None
    latest = await workflows.version(owner, workflow_id)
    if latest.canvas == canvas and latest.plan_hash == result.plan.hash:
        # An editor's autosave of what is saved already: the current version, not a new one;
        # its deployment is made if an earlier save could not (``deployment_pending``).
        return WorkflowSaved(
            id=workflow_id,
            version=latest.version,
            name=latest.name,
            warnings=[IssueOut(**i.to_dict()) for i in result.warnings]
            + [
                IssueOut(
                    code="unchanged",
                    severity="warning",
                    message=f"the canvas is the one of version {latest.version}; no new version was made",
                )
            ]
            + await _deploy(runs.ensure_deployment(latest, result.plan), workflow_id),
        )
    await refuse_cycles(workflows, owner, workflow_id, canvas)
    saved = await workflows.add_version(owner, workflow_id, result.plan.name, canvas, result.plan.hash, actor=owner)
    answer = await _saved(saved, result, runs)
    if before.name != saved.name:  # the deployment is named after the workflow: drop the old name's
        await _move_schedules(runs, schedules, owner, workflow_id, before.name)
        await _remove_deployment(runs, workflow_id, before.name)
    if not any(w.code == "deployment_pending" for w in answer.warnings):
        try:
            answer.warnings += [IssueOut(**w) for w in await schedules.misfits(owner, workflow_id, result.plan)]
        except Unavailable as exc:  # the version is saved; the warning is a courtesy
            log.warning("schedules of workflow %s not checked: %s", workflow_id, exc.message)
    return answer


@router.delete("/{workflow_id}", status_code=204, responses=ERRORS)
async def delete_workflow(workflow_id: str, owner: Owner, workflows: WorkflowsDep, runs: RunsDep) -> Response:
    """Delete a workflow and its Prefect deployment; its runs keep their history."""
    workflow = await workflows.get(owner, workflow_id)
    await workflows.delete(owner, workflow_id, actor=owner)
    await _remove_deployment(runs, workflow_id, workflow.name)
    return Response(status_code=204)


async def _move_schedules(runs: RunsDep, schedules: SchedulesDep, owner: str, workflow_id: str, old_name: str) -> None:
    try:
        old = await runs.find_deployment(workflow_id, old_name)
        if old is not None:
            await schedules.move(owner, workflow_id, old)
    except Unavailable as exc:
        log.warning("schedules of renamed workflow %s not moved: %s", workflow_id, exc.message)


async def _remove_deployment(runs: RunsDep, workflow_id: str, name: str) -> None:
    try:
        await runs.remove_deployment(workflow_id, name)
    except Unavailable as exc:
        # Harmless when left: workers refuse runs of a deleted workflow, saying so.
        log.warning("deployment of workflow %s not removed: %s", workflow_id, exc.message)
