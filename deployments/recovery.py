"""Crash recovery on Prefect's own parts: heartbeats, two automations, the run's journal.

Prefect leaves a flow run ``Running`` forever when the process running it dies. Here:

1. every FlowMaestro worker emits ``flowmaestro.flow-run.heartbeat`` for each run it holds
   (children and paused runs included), every third of ``crash_detect_s``
   (``HeartbeatEmitter``);
2. automation "lost worker": a run that emitted a heartbeat and then neither another one
   nor a final state (nor a suspension) within ``crash_detect_s`` is set ``Crashed``;
3. automation "continue": a ``Crashed`` run of the pool's deployments is set ``Scheduled``
   again; any worker picks it up and the flow restores what its journal holds
   (``flows.journal``). The flow counts its own crashes and ends ``Failed`` after
   ``crash_retries`` of them (``flows.flow``), so a run that kills its worker every time
   cannot loop.

The automations are Prefect's (visible, editable in its UI) and created idempotently when
a worker starts; the detection window is one per Prefect server (the last worker to start
sets it). Children of a sub-workflow node are marked crashed but not rescheduled:
their parent runs them again, and their journal makes them continue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

log = logging.getLogger("flowmaestro.recovery")

HEARTBEAT = "flowmaestro.flow-run.heartbeat"
ENDED = ("Completed", "Failed", "Cancelled", "Crashed", "Suspended")
"""States after which a run needs no heartbeat (``Suspended``: an approval released by its
worker; ``Paused`` runs are held by a worker, which keeps beating for them)."""


def heartbeat_interval(crash_detect_s: float) -> float:
    """Three beats per detection window: one lost event does not crash a run."""
    return crash_detect_s / 3


def recovery_automations(pool: str, crash_detect_s: float) -> list[AutomationCore]:
    # Not filtered by pool: only FlowMaestro workers send this heartbeat, and the final
    # states that answer it must match too, which a child run's (it has no pool) would not.
    lost = AutomationCore(
        name="flowmaestro: mark runs of lost workers crashed",
        description=f"A FlowMaestro run whose worker sent no heartbeat for {crash_detect_s:g} s is Crashed "
                    "(and then continued by another worker).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={HEARTBEAT}, expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in ENDED)},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=crash_detect_s)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, force=True,
                                    message=f"no heartbeat from its worker for {crash_detect_s:g} s: the worker "
                                            "died or lost its connection")])
    resume = AutomationCore(
        name=f"flowmaestro {pool}: continue crashed runs",
        description="A crashed FlowMaestro run is scheduled again; a worker continues it from its journal "
                    "(completed nodes are restored, not repeated).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "work-pool", "prefect.resource.name": pool},
            expect={"prefect.flow-run.Crashed"}, for_each={"prefect.resource.id"},
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, force=True,
                                    message="scheduled again after a crash: a worker continues it")])
    return [lost, resume]


async def ensure_recovery_automations(client: Any, pool: str, crash_detect_s: float) -> None:
    """Create or update the automations (by name); several workers starting at once may
    race to create one, so extra copies are removed."""
    for wanted in recovery_automations(pool, crash_detect_s):
        found = sorted(await client.read_automations_by_name(wanted.name), key=lambda a: str(a.id))
        if not found:
            await client.create_automation(wanted)
            found = sorted(await client.read_automations_by_name(wanted.name), key=lambda a: str(a.id))
        keep, extra = found[0], found[1:]
        for automation in extra:
            await client.delete_automation(automation.id)
        if _differs(keep, wanted):
            await client.update_automation(keep.id, wanted)


def _differs(existing: Any, wanted: AutomationCore) -> bool:
    fields = ("trigger", "actions", "enabled")
    return any(getattr(existing, f).model_dump(mode="json") != getattr(wanted, f).model_dump(mode="json")
               if hasattr(getattr(wanted, f), "model_dump") else
               _dump(getattr(existing, f)) != _dump(getattr(wanted, f)) for f in fields)


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


class HeartbeatEmitter:
    """Beats for every run a worker holds, in one loop (Prefect's own flow heartbeat is a
    thread per run, at least 30 s apart)."""

    def __init__(self, *, interval_s: float, runs: Callable[[], Iterable[str]] = tuple):
        """``runs``: the runs to beat for, asked at every beat."""
        self.runs = runs
        self.interval_s = interval_s
        self.beats = 0

    def beat_for(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            emit_event(event=HEARTBEAT, resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"})
            self.beats += 1

    async def run(self) -> None:
        while True:
            try:
                self.beat_for(list(self.runs()))
            except Exception as exc:  # the events client reconnects by itself; keep beating
                log.warning("could not send heartbeats: %s", exc)
            await asyncio.sleep(self.interval_s)
