"""Schedules of a workflow: Prefect deployment schedules, read back from Prefect."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.auth import Owner
from api.deps import SchedulesDep
from api.schedule_service import ScheduleChange, ScheduleView
from api.schemas import ErrorBody, ScheduleBody, ScheduleOut, SchedulePatch
from deployments.schedules import Timing

router = APIRouter(prefix="/api/workflows/{workflow_id}/schedules", tags=["schedules"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}


def _out(view: ScheduleView) -> ScheduleOut:
    s = view.schedule
    return ScheduleOut(
        id=s.id,
        workflow_id=view.workflow_id,
        cron=s.timing.cron,
        interval_s=s.timing.interval_s,
        rrule=s.timing.rrule,
        timezone=s.timing.timezone or "UTC",
        inputs=s.inputs,
        active=s.active,
        overlap=view.overlap,
        next_runs=s.next_runs,
    )  # type: ignore[arg-type]


@router.post("", status_code=201, response_model=ScheduleOut, response_model_exclude_none=True, responses=ERRORS)
async def create_schedule(workflow_id: str, body: ScheduleBody, owner: Owner, schedules: SchedulesDep) -> ScheduleOut:
    """Add a schedule to the workflow's Prefect deployment; its runs have ``inputs``
    (checked now: 422 naming the input) and run the latest version."""
    timing = Timing(cron=body.cron, interval_s=body.interval_s, rrule=body.rrule, timezone=body.timezone)
    return _out(await schedules.create(owner, workflow_id, timing, body.inputs, body.active, body.overlap))


@router.get("", response_model=list[ScheduleOut], response_model_exclude_none=True, responses=ERRORS)
async def list_schedules(workflow_id: str, owner: Owner, schedules: SchedulesDep) -> list[ScheduleOut]:
    """As Prefect has them now (a schedule paused or edited in the Prefect UI shows so)."""
    return [_out(view) for view in await schedules.list(owner, workflow_id)]


@router.patch("/{schedule_id}", response_model=ScheduleOut, response_model_exclude_none=True, responses=ERRORS)
async def update_schedule(
    workflow_id: str, schedule_id: str, body: SchedulePatch, owner: Owner, schedules: SchedulesDep
) -> ScheduleOut:
    """Pause (``{"active": false}``), resume, or change the timing, inputs or overlap."""
    change = ScheduleChange(**body.model_dump(exclude_unset=True))
    return _out(await schedules.update(owner, workflow_id, schedule_id, change))


@router.delete("/{schedule_id}", status_code=204, responses=ERRORS)
async def delete_schedule(workflow_id: str, schedule_id: str, owner: Owner, schedules: SchedulesDep) -> Response:
    """Remove the schedule; Prefect drops its runs that have not started."""
    await schedules.delete(owner, workflow_id, schedule_id)
    return Response(status_code=204)
