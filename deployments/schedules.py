"""The schedules of a workflow are the schedules of its Prefect deployment.

Prefect keeps them: the UI shows, pauses and edits them, its scheduler service creates
their runs, and they survive restarts of everything. A schedule's inputs are its
per-schedule ``parameters`` (``{"inputs": {...}}``, merged over the deployment's
``{workflow_id, owner}``), so every scheduled run names the workflow and loads its latest
version. Nothing here keeps a copy: what FlowMaestro reports is read back from Prefect, so
a change made in the UI is what the API answers.

The overlap policy is the one thing Prefect cannot hold per schedule. Its closest
mechanism is the deployment's concurrency limit with a collision strategy, which covers
every run of the deployment: ``overlap_strategy`` folds the policies of a workflow's
schedules into one (docs/triggers.md says what that means for runs started otherwise).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from dateutil.rrule import SECONDLY, rruleset, rrulestr
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions, DeploymentSchedule
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from pydantic import ValidationError

from flows.prefect_compat import cron_dates, next_schedule_dates
from store.errors import Invalid

Overlap = Literal["allow", "skip", "queue"]
OVERLAPS: tuple[Overlap, ...] = ("allow", "skip", "queue")
MIN_INTERVAL_S = 10
MAX_INTERVAL_S = 366 * 86_400
NEXT_RUNS = 5
GAP_SAMPLE = 1000
"""Occurrences of a cron with seconds or an rrule whose gaps are measured: the pattern of a
cron repeats within its firing hours (a seconds set of 7 values or more has a gap under
10 s inside one minute), and Prefect's scheduler looks no further ahead either."""
STRATEGY_OF_OVERLAP = {"skip": ConcurrencyLimitStrategy.CANCEL_NEW, "queue": ConcurrencyLimitStrategy.ENQUEUE}


@dataclass(frozen=True)
class Timing:
    """When a schedule fires: exactly one of ``cron``, ``interval_s``, ``rrule``."""

    cron: str | None = None
    interval_s: float | None = None
    rrule: str | None = None
    timezone: str | None = None

    def schedule(self) -> CronSchedule | IntervalSchedule | RRuleSchedule:
        """Prefect's schedule; ``Invalid`` naming the field that does not fit."""
        given = [name for name in ("cron", "interval_s", "rrule") if getattr(self, name) is not None]
        if len(given) != 1:
            message = (
                "give exactly one of cron, interval_s, rrule"
                if not given
                else f"give only one of cron, interval_s, rrule (got {', '.join(given)})"
            )
            raise Invalid(message, [{"code": "invalid_schedule", "field": "schedule", "message": message}])
        timezone = self.timezone or "UTC"
        try:
            if self.cron is not None:
                return CronSchedule(cron=self.cron, timezone=timezone)
            if self.rrule is not None:
                return RRuleSchedule(rrule=self.rrule, timezone=timezone)
            assert self.interval_s is not None
            if not math.isfinite(self.interval_s) or self.interval_s > MAX_INTERVAL_S:
                raise Invalid(
                    "interval_s must be a number of seconds up to a year",
                    [
                        {
                            "code": "invalid_schedule",
                            "field": "interval_s",
                            "message": f"{self.interval_s} is not between {MIN_INTERVAL_S} "
                            f"and {MAX_INTERVAL_S} seconds",
                        }
                    ],
                )
            if self.interval_s < MIN_INTERVAL_S:
                raise Invalid(
                    f"interval_s must be at least {MIN_INTERVAL_S} seconds",
                    [
                        {
                            "code": "invalid_schedule",
                            "field": "interval_s",
                            "message": f"{self.interval_s} is below {MIN_INTERVAL_S} seconds",
                        }
                    ],
                )
            return IntervalSchedule(interval=timedelta(seconds=self.interval_s), timezone=timezone)
        except ValidationError as exc:
            issues = []
            for error in exc.errors():
                name = str(error["loc"][0]) if error.get("loc") else given[0]
                name = "interval_s" if name == "interval" else name
                issues.append(
                    {
                        "code": "invalid_schedule",
                        "field": name,
                        "message": str(error["msg"]).removeprefix("Value error, "),
                    }
                )
            raise Invalid(
                "invalid schedule: " + "; ".join(f"{i['field']}: {i['message']}" for i in issues), issues
            ) from exc


async def refuse_short_gaps(timing: Timing) -> None:
    """``Invalid`` naming the field when runs of a cron or rrule would come closer than
    ``MIN_INTERVAL_S`` (``interval_s`` is checked by ``Timing.schedule``): a 6-field cron
    (seconds) or an rrule with ``FREQ=SECONDLY`` or several ``BYSECOND`` values. Measured
    on the next occurrences, in a thread: iterating dates is CPU work."""
    if timing.cron is not None and len(timing.cron.split()) > 5:
        schedule = timing.schedule()
        gap = _smallest_gap(await asyncio.to_thread(cron_dates, schedule, GAP_SAMPLE))
        field, value = "cron", timing.cron
    elif timing.rrule is not None:
        gap = await asyncio.to_thread(_rrule_gap, timing.rrule)
        field, value = "rrule", timing.rrule
    else:
        return
    if gap is not None and gap < MIN_INTERVAL_S:
        message = (
            f"{field}: {value!r} starts runs {gap:g} s apart; at least {MIN_INTERVAL_S} s are needed between two runs"
        )
        raise Invalid(message, [{"code": "invalid_schedule", "field": field, "message": message}])


def _rrule_gap(text: str) -> float | None:
    """The smallest gap of an rrule (set), from its next occurrences and its listed dates
    (RDATE). A per-second rule is refused whatever its interval: Prefect's scheduler walks
    every occurrence from the rule's start (2020 when the rule gives none), hundreds of
    millions for a per-second rule."""
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    rules = rrulestr(text, forceset=True, dtstart=now)
    if any(rule._freq == SECONDLY for rule in rules._rrule):
        message = (
            f"rrule: FREQ=SECONDLY is not accepted; use interval_s for runs seconds apart (at least {MIN_INTERVAL_S} s)"
        )
        raise Invalid(message, [{"code": "invalid_schedule", "field": "rrule", "message": message}])
    # Each rule restarted now (naive), so no rule is walked from a DTSTART years ago; the
    # gaps of a rule do not depend on where it starts. Exclusions are left out: they only
    # widen gaps.
    restarted = rruleset()
    for rule in rules._rrule:
        until = rule._until.replace(tzinfo=None) if rule._until else None
        if until is None or until > now:  # (a rule that has ended starts no more runs)
            restarted.rrule(rule.replace(dtstart=now, until=until))
    dates = list(itertools.islice(restarted, GAP_SAMPLE))
    rdates = sorted(d.replace(tzinfo=None) for d in rules._rdate)  # listed dates may sit anywhere
    return min((gap for gap in (_smallest_gap(dates), _smallest_gap(rdates)) if gap is not None), default=None)


def _smallest_gap(dates: list[datetime]) -> float | None:
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(dates, dates[1:])]
    return min(gaps) if gaps else None


@dataclass(frozen=True)
class WorkflowSchedule:
    """A schedule as Prefect has it now."""

    id: str
    timing: Timing
    inputs: dict[str, Any]
    active: bool
    next_runs: list[str] = field(default_factory=list)


def timing_of(schedule: Any) -> Timing:
    if isinstance(schedule, CronSchedule):
        return Timing(cron=schedule.cron, timezone=schedule.timezone or "UTC")
    if isinstance(schedule, IntervalSchedule):
        return Timing(interval_s=schedule.interval.total_seconds(), timezone=schedule.timezone or "UTC")
    if isinstance(schedule, RRuleSchedule):
        return Timing(rrule=schedule.rrule, timezone=schedule.timezone or "UTC")
    return Timing(timezone="UTC")  # a kind FlowMaestro does not create (none exists in Prefect 3.9)


def overlap_strategy(policies: Iterable[str]) -> ConcurrencyLimitStrategy | None:
    """One collision strategy for the deployment from its schedules' policies: the
    strictest wins (``skip`` over ``queue`` over ``allow``), so no schedule runs more at
    once than it asked for; None when every schedule allows overlapping runs."""
    found = set(policies)
    for policy in ("skip", "queue"):
        if policy in found:
            return STRATEGY_OF_OVERLAP[policy]
    return None


class DeploymentSchedules:
    """Prefect client calls on the schedules of one deployment. Each takes the caller's client."""

    async def list(self, client: PrefectClient, deployment_id: UUID) -> list[WorkflowSchedule]:
        found = await client.read_deployment_schedules(deployment_id)
        return [await self._of(s) for s in sorted(found, key=lambda s: s.created or 0)]

    async def read(self, client: PrefectClient, deployment_id: UUID, schedule_id: str) -> WorkflowSchedule | None:
        return next((s for s in await self.list(client, deployment_id) if s.id == schedule_id), None)

    async def create(
        self, client: PrefectClient, deployment_id: UUID, timing: Timing, inputs: dict[str, Any], active: bool
    ) -> WorkflowSchedule:
        created = await client.create_deployment_schedules(
            deployment_id,
            [DeploymentScheduleCreate(schedule=timing.schedule(), active=active, parameters={"inputs": inputs})],
        )
        return await self._of(created[0])

    async def update(
        self,
        client: PrefectClient,
        deployment_id: UUID,
        schedule_id: str,
        *,
        timing: Timing | None = None,
        inputs: dict[str, Any] | None = None,
        active: bool | None = None,
    ) -> None:
        """Change what is given. Prefect then drops the schedule's future runs and its
        scheduler makes new ones from the schedule as it is now.

        The schedule's parameters are always sent, as the Prefect UI does: Prefect 3.9's
        PATCH resets the parameters of a schedule to ``{}`` when they are left out (its
        update model defaults them to an empty dict), which would drop the inputs."""
        current = next(
            (s for s in await client.read_deployment_schedules(deployment_id) if str(s.id) == schedule_id), None
        )
        parameters = dict(current.parameters or {}) if current is not None else {}
        if inputs is not None:
            parameters["inputs"] = inputs
        await client.update_deployment_schedule(
            deployment_id,
            UUID(schedule_id),
            active=active,
            schedule=timing.schedule() if timing is not None else None,
            parameters=parameters,
        )

    async def delete(self, client: PrefectClient, deployment_id: UUID, schedule_id: str) -> None:
        await client.delete_deployment_schedule(deployment_id, UUID(schedule_id))

    async def copy(self, client: PrefectClient, from_id: UUID, to_id: UUID) -> dict[str, str]:
        """Copy every schedule of one deployment to another (a renamed workflow gets a new
        deployment, named after it); answers old schedule id -> new."""
        found = sorted(await client.read_deployment_schedules(from_id), key=lambda s: s.created or 0)
        if not found:
            return {}
        created = await client.create_deployment_schedules(
            to_id,
            [
                DeploymentScheduleCreate(schedule=s.schedule, active=s.active, parameters=s.parameters, slug=s.slug)
                for s in found
            ],
        )
        return {str(old.id): str(new.id) for old, new in zip(found, created)}

    async def set_overlap(
        self, client: PrefectClient, deployment_id: UUID, strategy: ConcurrencyLimitStrategy | None
    ) -> None:
        """One run of the deployment at a time, colliding runs cancelled or queued by
        Prefect; or no limit at all."""
        if strategy is None:
            update = DeploymentUpdate(concurrency_limit=None)
        else:
            update = DeploymentUpdate(
                concurrency_limit=1, concurrency_options=ConcurrencyOptions(collision_strategy=strategy)
            )
        await client.update_deployment(deployment_id, update)

    async def _of(self, schedule: DeploymentSchedule) -> WorkflowSchedule:
        inputs = (schedule.parameters or {}).get("inputs")
        next_runs = await next_schedule_dates(schedule.schedule, NEXT_RUNS) if schedule.active else []
        return WorkflowSchedule(
            id=str(schedule.id),
            timing=timing_of(schedule.schedule),
            inputs=inputs if isinstance(inputs, dict) else {},
            active=schedule.active,
            next_runs=[d.isoformat() for d in next_runs],
        )
