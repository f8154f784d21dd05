"""``PATCH /api/workflows/{id}``: description, tags and status, without a new version.

A status that stops schedules (``draft``, ``archived``) pauses the workflow's schedules in
Prefect, so the Prefect UI shows them paused and Prefect drops their future runs; back to
``active`` resumes those it paused (not those someone paused before). The ids it paused are
kept with the workflow. Prefect is changed first: when it is down the answer is a 503 and
nothing changed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import ConfigDict, Field, StringConstraints

from api.auth import Owner
from api.deps import SchedulesDep
from api.pagination import NO_NUL
from api.schemas import ErrorBody, RequestBody, WorkflowSummary
from store.workflow_meta import MAX_DESCRIPTION, MAX_TAGS, TAG, MetaChange, WorkflowCatalog, checked_tags

router = APIRouter(prefix="/api/workflows", tags=["workflows"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 422, 503)}


def get_catalog(request: Request) -> WorkflowCatalog:
    catalog: WorkflowCatalog = request.app.state.catalog
    return catalog


CatalogDep = Annotated[WorkflowCatalog, Depends(get_catalog)]


class WorkflowPatch(RequestBody):
    """What is left out (or null) stays as it is; anything else (a name, a canvas) is refused:
    those make a version (``PUT``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    description: str | None = Field(None, max_length=MAX_DESCRIPTION, pattern=NO_NUL)
    tags: list[Annotated[str, StringConstraints(pattern=TAG.pattern)]] | None = Field(
        None,
        max_length=MAX_TAGS,
        description="The whole set of tags (replaces the current one): each 1 to 64 letters, digits, "
        "space, _ . : / -, starting with a letter or digit.",
    )
    status: Literal["active", "draft", "archived"] | None = Field(
        None,
        description="active: anything starts runs; draft: only executes by hand (schedules paused, "
        "webhook calls 409); archived: nothing (execute 409 too, schedules paused).",
    )


@router.patch("/{workflow_id}", response_model=WorkflowSummary, responses=ERRORS)
async def patch_workflow(
    workflow_id: str, body: WorkflowPatch, owner: Owner, catalog: CatalogDep, schedules: SchedulesDep
) -> WorkflowSummary:
    """Change a workflow's description, tags or status; no new version is made. Recorded in
    the audit log (``workflow.update``) with what changed."""
    current = await catalog.get(owner, workflow_id)  # 404 first
    if body.tags is not None:
        checked_tags(body.tags)  # 422 naming the tag before Prefect is touched
    paused: list[str] | None = None
    set_paused = False
    if body.status is not None and body.status != current.status:
        was_running = current.status == "active"
        if was_running:
            # Paused in Prefect before the status is stored: a 503 leaves both as they were.
            paused = await schedules.set_all_active(owner, workflow_id, False)
            set_paused = True
        elif body.status == "active":
            await schedules.set_all_active(
                owner, workflow_id, True, only=await catalog.paused_schedules(owner, workflow_id)
            )
            paused, set_paused = None, True
    change = MetaChange(body.description, body.tags, body.status, paused, set_paused)
    meta = await catalog.change(owner, workflow_id, change, actor=owner)
    return WorkflowSummary.model_validate(meta, from_attributes=True)
