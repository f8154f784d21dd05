"""Workflow CRUD with immutable versions."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from api.auth import Owner
from api.db import Workflow, WorkflowVersion, utcnow
from api.deps import SessionDep
from api.errors import ApiError
from api.schemas import (CanvasBody, ErrorBody, ValidationReport, WorkflowPublic, WorkflowSaved,
                         WorkflowSummary)
from builder.compiler import CompileResult, compile_canvas
from node_handlers.registry import default_registry

router = APIRouter(prefix="/api/workflows", tags=["workflows"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422)}


def compile_or_422(canvas: dict[str, Any]) -> CompileResult:
    result = compile_canvas(canvas, default_registry())
    if not result.ok:
        raise ApiError(422, f"invalid canvas: {len(result.errors)} error(s)", [i.to_dict() for i in result.issues])
    return result


async def find_workflow(session: AsyncSession, owner: str, workflow_id: str) -> Workflow:
    workflow = await session.get(Workflow, workflow_id)
    if workflow is None or workflow.owner != owner or workflow.deleted_at is not None:
        raise ApiError(404, f"workflow {workflow_id} not found")
    return workflow


async def find_version(session: AsyncSession, workflow: Workflow, version: int | None) -> WorkflowVersion:
    found = await session.get(WorkflowVersion, (workflow.id, version or workflow.latest_version))
    if found is None:
        raise ApiError(404, f"workflow {workflow.id} has no version {version}")
    return found


async def _commit_or_409(session: AsyncSession, name: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ApiError(409, f"a workflow named {name!r} already exists") from exc


@router.post("", status_code=201, response_model=WorkflowSaved, responses=ERRORS)
async def create_workflow(body: CanvasBody, owner: Owner, session: SessionDep) -> WorkflowSaved:
    """Save a new workflow (version 1). An invalid canvas answers 422 with every issue."""
    result = compile_or_422(body.canvas)
    assert result.plan is not None
    workflow = Workflow(id=str(uuid.uuid4()), owner=owner, name=result.plan.name, latest_version=1)
    session.add(workflow)
    session.add(WorkflowVersion(workflow_id=workflow.id, version=1, canvas=body.canvas, plan_hash=result.plan.hash))
    await _commit_or_409(session, workflow.name)
    return WorkflowSaved(id=workflow.id, version=1, name=workflow.name,
                         warnings=[i.to_dict() for i in result.warnings])


@router.get("", response_model=list[WorkflowSummary], responses=ERRORS)
async def list_workflows(owner: Owner, session: SessionDep) -> list[WorkflowSummary]:
    rows = await session.scalars(select(Workflow).where(Workflow.owner == owner, Workflow.deleted_at.is_(None))
                                 .order_by(Workflow.created_at))
    return [WorkflowSummary.model_validate(row, from_attributes=True) for row in rows]


@router.post("/validate", response_model=ValidationReport, responses=ERRORS)
async def validate_workflow(body: CanvasBody, owner: Owner) -> ValidationReport:
    """Compile without saving: every issue, and the plan when valid."""
    result = compile_canvas(body.canvas, default_registry())
    return ValidationReport(valid=result.ok, issues=[i.to_dict() for i in result.issues],
                            plan=result.plan.to_dict() if result.plan else None)


@router.get("/{workflow_id}", response_model=WorkflowPublic, responses=ERRORS)
async def read_workflow(workflow_id: str, owner: Owner, session: SessionDep, version: int | None = None) -> WorkflowPublic:
    workflow = await find_workflow(session, owner, workflow_id)
    found = await find_version(session, workflow, version)
    return WorkflowPublic(id=workflow.id, name=workflow.name, latest_version=workflow.latest_version,
                          created_at=workflow.created_at, updated_at=workflow.updated_at, version=found.version,
                          canvas=found.canvas, plan_hash=found.plan_hash)


@router.put("/{workflow_id}", response_model=WorkflowSaved, responses=ERRORS)
async def update_workflow(workflow_id: str, body: CanvasBody, owner: Owner, session: SessionDep) -> WorkflowSaved:
    """Save a new version; earlier versions stay readable and runnable."""
    workflow = await find_workflow(session, owner, workflow_id)
    result = compile_or_422(body.canvas)
    assert result.plan is not None
    workflow.latest_version += 1
    workflow.name = result.plan.name
    workflow.updated_at = utcnow()
    session.add(WorkflowVersion(workflow_id=workflow.id, version=workflow.latest_version, canvas=body.canvas,
                                plan_hash=result.plan.hash))
    await _commit_or_409(session, workflow.name)
    return WorkflowSaved(id=workflow.id, version=workflow.latest_version, name=workflow.name,
                         warnings=[i.to_dict() for i in result.warnings])


@router.delete("/{workflow_id}", status_code=204, responses=ERRORS)
async def delete_workflow(workflow_id: str, owner: Owner, session: SessionDep) -> Response:
    """Delete a workflow; its runs keep their history."""
    workflow = await find_workflow(session, owner, workflow_id)
    workflow.deleted_at = utcnow()
    await session.commit()
    return Response(status_code=204)
