"""Schedules of a workflow: checked here, kept by Prefect (``deployments.schedules``).

The inputs of a schedule are checked against the workflow's latest version, like the
inputs of ``POST /execute``. The overlap policy is the only thing stored in FlowMaestro's
database, keyed by Prefect's schedule id; after every change the deployment's
concurrency is set from the policies of all the workflow's schedules.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from api.runs import RunService, check_inputs
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from builder.plan import Plan
from deployments.schedules import (DeploymentSchedules, Overlap, Timing, WorkflowSchedule, overlap_strategy,
                                   refuse_short_gaps)
from store.errors import NotFound
from store.triggers import ScheduleOverlaps


@dataclass(frozen=True)
class ScheduleView:
    workflow_id: str
    schedule: WorkflowSchedule
    overlap: str


@dataclass(frozen=True)
class ScheduleChange:
    """A PATCH: what is None stays as it is."""

    cron: str | None = None
    interval_s: float | None = None
    rrule: str | None = None
    timezone: str | None = None
    inputs: dict[str, Any] | None = None
    active: bool | None = None
    overlap: Overlap | None = None


class ScheduleService:
    def __init__(self, runs: RunService, overlaps: ScheduleOverlaps, schedules: DeploymentSchedules | None = None):
        self.runs, self.overlaps = runs, overlaps
        self.schedules = schedules or DeploymentSchedules()

    async def list(self, owner: str, workflow_id: str) -> list[ScheduleView]:
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        found = await self.runs.call_prefect("read the schedules",
                                             lambda: self.schedules.list(self.runs.prefect, deployment_id))
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        return [ScheduleView(workflow_id, s, policies.get(s.id, "allow")) for s in found]

    async def create(self, owner: str, workflow_id: str, timing: Timing, inputs: dict[str, Any], active: bool,
                     overlap: Overlap) -> ScheduleView:
        _saved, plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        timing.schedule()  # 422 naming the field before anything is created
        await refuse_short_gaps(timing)
        check_inputs(plan, inputs)
        # A schedule that limits overlap is created paused and resumed once the deployment's
        # concurrency is set: Prefect's scheduler makes the first run at once, and a run
        # that starts before the limit exists holds no slot, so the next would overlap it.
        limited = overlap != "allow" and active
        created = await self.runs.call_prefect("create the schedule", lambda: self.schedules.create(
            self.runs.prefect, deployment_id, timing, inputs, active and not limited))
        await self.overlaps.set(owner, workflow_id, created.id, overlap)
        await self._apply_overlap(owner, workflow_id, deployment_id)
        if limited:
            await self.runs.call_prefect("resume the schedule", lambda: self.schedules.update(
                self.runs.prefect, deployment_id, created.id, active=True))
            created = await self._read(deployment_id, created.id)
        return ScheduleView(workflow_id, created, overlap)

    async def update(self, owner: str, workflow_id: str, schedule_id: str, change: ScheduleChange) -> ScheduleView:
        _saved, plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        current = await self._read(deployment_id, schedule_id)
        timing = None
        if change.cron is not None or change.interval_s is not None or change.rrule is not None:
            timing = Timing(change.cron, change.interval_s, change.rrule, change.timezone or current.timing.timezone)
        elif change.timezone is not None:
            timing = replace(current.timing, timezone=change.timezone)
        if timing is not None:
            timing.schedule()
            await refuse_short_gaps(timing)
        if change.inputs is not None:
            check_inputs(plan, change.inputs)
        if timing is not None or change.inputs is not None or change.active is not None:
            await self.runs.call_prefect("update the schedule", lambda: self.schedules.update(
                self.runs.prefect, deployment_id, schedule_id, timing=timing, inputs=change.inputs,
                active=change.active))
        if change.overlap is not None:
            await self.overlaps.set(owner, workflow_id, schedule_id, change.overlap)
            await self._apply_overlap(owner, workflow_id, deployment_id)
        updated = await self._read(deployment_id, schedule_id)
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        return ScheduleView(workflow_id, updated, policies.get(schedule_id, "allow"))

    async def delete(self, owner: str, workflow_id: str, schedule_id: str) -> None:
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        await self._read(deployment_id, schedule_id)
        await self.runs.call_prefect("delete the schedule", lambda: self.schedules.delete(
            self.runs.prefect, deployment_id, schedule_id))
        await self.overlaps.forget(owner, [schedule_id])
        await self._apply_overlap(owner, workflow_id, deployment_id)

    async def move(self, owner: str, workflow_id: str, old_deployment: UUID) -> None:
        """A renamed workflow: its schedules (and their policies) move to the deployment of
        its new name before the old one is removed."""
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        moved = await self.runs.call_prefect("move the schedules", lambda: self.schedules.copy(
            self.runs.prefect, old_deployment, deployment_id))
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        for old, new in moved.items():
            if old in policies:
                await self.overlaps.set(owner, workflow_id, new, policies[old])
        await self.overlaps.forget(owner, [old for old in moved if old in policies])
        if moved:
            await self._apply_overlap(owner, workflow_id, deployment_id)

    async def misfits(self, owner: str, workflow_id: str, plan: Plan) -> builtins.list[dict[str, Any]]:
        """Warnings for the schedules whose inputs the version ``plan`` was compiled from
        would refuse (a new version saved): their runs fail until their inputs are changed."""
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        found = await self.runs.call_prefect("read the schedules",
                                             lambda: self.schedules.list(self.runs.prefect, deployment_id))
        warnings = []
        for schedule in found:
            try:
                validate_inputs(plan.inputs, schedule.inputs)
            except InputsInvalid as exc:
                message = "; ".join(i.message for i in exc.issues)
                warnings.append({"code": "schedule_inputs_invalid", "severity": "warning", "field": "inputs",
                                 "message": f"schedule {schedule.id}: its inputs do not fit this version "
                                            f"({message}); its runs fail until they are changed (PATCH "
                                            f"/api/workflows/{workflow_id}/schedules/{schedule.id})"})
        return warnings

    async def _read(self, deployment_id: UUID, schedule_id: str) -> WorkflowSchedule:
        found = await self.runs.call_prefect("read the schedule", lambda: self.schedules.read(
            self.runs.prefect, deployment_id, schedule_id))
        if found is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return found

    async def _apply_overlap(self, owner: str, workflow_id: str, deployment_id: UUID) -> None:
        found = await self.runs.call_prefect("read the schedules",
                                             lambda: self.schedules.list(self.runs.prefect, deployment_id))
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        strategy = overlap_strategy(policies.get(s.id, "allow") for s in found)
        await self.runs.call_prefect("set the deployment's concurrency", lambda: self.schedules.set_overlap(
            self.runs.prefect, deployment_id, strategy))
