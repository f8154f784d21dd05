"""Schedules of a workflow: checked here, kept by Prefect (``deployments.schedules``).

The inputs of a schedule are checked against the workflow's latest version, like the
inputs of ``POST /execute``. The overlap policy is the only thing stored in FlowMaestro's
database, keyed by Prefect's schedule id; after every change the deployment's
concurrency is set from the policies of all the workflow's schedules.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from api.prefect_gateway import PrefectGateway
from api.runs import RunService
from builder.inputs import validate_inputs
from builder.issues import InputsInvalid
from builder.plan import Plan
from deployments.schedules import (
    DeploymentSchedules,
    Overlap,
    Timing,
    WorkflowSchedule,
    overlap_strategy,
    refuse_short_gaps,
)
from store.audit import AuditLog
from store.errors import Conflict, NotFound
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
    def __init__(
        self,
        runs: RunService,
        prefect: PrefectGateway,
        overlaps: ScheduleOverlaps,
        schedules: DeploymentSchedules | None = None,
        audit: AuditLog | None = None,
    ):
        """``runs``: the workflow's latest version, its plan and deployment. ``prefect``: the
        schedules' own calls to Prefect. ``audit``: where changes are recorded, once Prefect
        has them (a schedule is Prefect's: no transaction of ours holds it)."""
        self.runs, self.prefect, self.overlaps = runs, prefect, overlaps
        self.schedules = schedules or DeploymentSchedules()
        self.audit = audit

    async def _record(self, owner: str, action: str, schedule_id: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            await self.audit.append(
                owner=owner, actor=owner, action=action, target_type="schedule", target_id=schedule_id, details=details
            )

    async def set_all_active(
        self, owner: str, workflow_id: str, active: bool, only: Iterable[str] | None = None
    ) -> builtins.list[str]:
        """Pause (or resume) every schedule of the workflow in Prefect (``only`` those ids when
        given): the ids of the schedules changed. A workflow's status does this
        (``store.workflow_meta``), so the Prefect UI shows what runs."""
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        found = await self.prefect.call("read the schedules", lambda client: self.schedules.list(client, deployment_id))
        wanted = set(only) if only is not None else None
        changed = [s.id for s in found if s.active != active and (wanted is None or s.id in wanted)]
        for schedule_id in changed:
            await self.prefect.call(
                "pause the schedule" if not active else "resume the schedule",
                lambda client, schedule_id=schedule_id: self.schedules.update(  # type: ignore[misc]
                    client, deployment_id, schedule_id, active=active
                ),
            )
        return changed

    async def list(self, owner: str, workflow_id: str) -> list[ScheduleView]:
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        found = await self.prefect.call("read the schedules", lambda client: self.schedules.list(client, deployment_id))
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        return [ScheduleView(workflow_id, s, policies.get(s.id, "allow")) for s in found]

    async def create(
        self, owner: str, workflow_id: str, timing: Timing, inputs: dict[str, Any], active: bool, overlap: Overlap
    ) -> ScheduleView:
        saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        if active:
            _refuse_inactive(saved.status, workflow_id)
        timing.schedule()  # 422 naming the field before anything is created
        await refuse_short_gaps(timing)
        await self.runs.compiler.checked_inputs(saved, inputs)
        # A schedule that limits overlap is created paused and resumed once the deployment's
        # concurrency is set: Prefect's scheduler makes the first run at once, and a run
        # that starts before the limit exists holds no slot, so the next would overlap it.
        limited = overlap != "allow" and active
        created = await self.prefect.call(
            "create the schedule",
            lambda client: self.schedules.create(client, deployment_id, timing, inputs, active and not limited),
        )
        await self.overlaps.set(owner, workflow_id, created.id, overlap)
        await self._apply_overlap(owner, workflow_id, deployment_id)
        if limited:
            await self.prefect.call(
                "resume the schedule",
                lambda client: self.schedules.update(client, deployment_id, created.id, active=True),
            )
            created = await self._read(deployment_id, created.id)
        await self._record(
            owner, "schedule.create", created.id, {"workflow_id": workflow_id, "active": active, "overlap": overlap}
        )
        return ScheduleView(workflow_id, created, overlap)

    async def update(self, owner: str, workflow_id: str, schedule_id: str, change: ScheduleChange) -> ScheduleView:
        saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        if change.active:
            _refuse_inactive(saved.status, workflow_id)
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
            await self.runs.compiler.checked_inputs(saved, change.inputs)
        if timing is not None or change.inputs is not None or change.active is not None:
            await self.prefect.call(
                "update the schedule",
                lambda client: self.schedules.update(
                    client, deployment_id, schedule_id, timing=timing, inputs=change.inputs, active=change.active
                ),
            )
        if change.overlap is not None:
            await self.overlaps.set(owner, workflow_id, schedule_id, change.overlap)
            await self._apply_overlap(owner, workflow_id, deployment_id)
        updated = await self._read(deployment_id, schedule_id)
        changed = [
            name
            for name in ("cron", "interval_s", "rrule", "timezone", "inputs", "active", "overlap")
            if getattr(change, name) is not None
        ]
        details: dict[str, Any] = {"workflow_id": workflow_id, "changed": changed}
        if change.active is not None:
            details["active"] = change.active
        await self._record(owner, "schedule.update", schedule_id, details)
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        return ScheduleView(workflow_id, updated, policies.get(schedule_id, "allow"))

    async def delete(self, owner: str, workflow_id: str, schedule_id: str) -> None:
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        await self._read(deployment_id, schedule_id)
        await self.prefect.call(
            "delete the schedule", lambda client: self.schedules.delete(client, deployment_id, schedule_id)
        )
        await self.overlaps.forget(owner, [schedule_id])
        await self._apply_overlap(owner, workflow_id, deployment_id)
        await self._record(owner, "schedule.delete", schedule_id, {"workflow_id": workflow_id})

    async def move(self, owner: str, workflow_id: str, old_deployment: UUID) -> None:
        """A renamed workflow: its schedules (and their policies) move to the deployment of
        its new name before the old one is removed."""
        _saved, _plan, deployment_id = await self.runs.deployment_of(owner, workflow_id)
        moved = await self.prefect.call(
            "move the schedules", lambda client: self.schedules.copy(client, old_deployment, deployment_id)
        )
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
        found = await self.prefect.call("read the schedules", lambda client: self.schedules.list(client, deployment_id))
        warnings = []
        for schedule in found:
            try:
                validate_inputs(plan.inputs, schedule.inputs)
            except InputsInvalid as exc:
                message = "; ".join(i.message for i in exc.issues)
                warnings.append(
                    {
                        "code": "schedule_inputs_invalid",
                        "severity": "warning",
                        "field": "inputs",
                        "message": f"schedule {schedule.id}: its inputs do not fit this version "
                        f"({message}); its runs fail until they are changed (PATCH "
                        f"/api/workflows/{workflow_id}/schedules/{schedule.id})",
                    }
                )
        return warnings

    async def _read(self, deployment_id: UUID, schedule_id: str) -> WorkflowSchedule:
        found = await self.prefect.call(
            "read the schedule", lambda client: self.schedules.read(client, deployment_id, schedule_id)
        )
        if found is None:
            raise NotFound(f"schedule {schedule_id} not found")
        return found

    async def _apply_overlap(self, owner: str, workflow_id: str, deployment_id: UUID) -> None:
        found = await self.prefect.call("read the schedules", lambda client: self.schedules.list(client, deployment_id))
        policies = await self.overlaps.of_workflow(owner, workflow_id)
        strategy = overlap_strategy(policies.get(s.id, "allow") for s in found)
        await self.prefect.call(
            "set the deployment's concurrency",
            lambda client: self.schedules.set_overlap(client, deployment_id, strategy),
        )


def _refuse_inactive(status: str, workflow_id: str) -> None:
    """A schedule of a draft or archived workflow stays paused (its status paused it in Prefect)."""
    if status != "active":
        raise Conflict(
            f"workflow {workflow_id} is {status}: its schedules stay paused until it is active "
            f'(PATCH /api/workflows/{workflow_id} {{"status": "active"}})',
            [{"code": f"workflow_{status}", "field": "active", "message": f"the workflow is {status}"}],
        )
