"""Crash recovery on Prefect's own parts: heartbeats, three automations, the run's journal.

Prefect leaves a flow run ``Running`` forever when the process running it dies. Here:

1. every FlowMaestro worker emits a heartbeat event for each run it holds (children and
   paused runs included), every third of ``crash_detect_s``, from a thread, so a run that
   keeps the event loop busy does not silence the others (``HeartbeatEmitter``);
2. automations "lost worker": a run of the pool that a worker took (Pending, Running) or
   beat for, and that then sends neither a heartbeat nor a final state (nor a suspension)
   within ``crash_detect_s``, is set ``Crashed``; child runs the same from their first
   heartbeat;
3. automation "continue": a ``Crashed`` run of the pool's deployments is set ``Scheduled``
   again; any worker picks it up and the flow restores what its journal holds
   (``flows.journal``). The flow counts its own crashes and ends ``Failed`` after
   ``crash_retries`` of them (``flows.flow``), so a run that kills its worker every time
   cannot loop;
4. every worker sweeps its pool (``CrashSweeper``): a run still ``Crashed`` ``grace_s``
   after it crashed (the automation's action failed, e.g. Prefect on SQLite answered
   "database is locked", and Prefect does not retry an action) is scheduled again the same
   way; and a worker that finds a run it still executes marked ``Crashed`` or scheduled
   again (a false alarm) sets it back to what it was (``state_to_restore``), instead of
   leaving it ``pending`` until its execution ends. The sweep also schedules again a run
   released while a delay waits (``flows.releases``) whose worker died between suspending
   it and scheduling it for the delay's end, once that end has come.

The automations are Prefect's (visible, editable in its UI) and created idempotently when
a worker starts; the detection window of child runs is one per Prefect server (the last
worker to start sets it). Children of a sub-workflow node are marked crashed but not
rescheduled: their parent runs them again, and their journal makes them continue.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.events import emit_event
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from flows import prefect_compat

log = logging.getLogger("flowmaestro.recovery")

HEARTBEAT = "flowmaestro.flow-run.heartbeat"
"""For a run a worker took from its pool; it names the pool, as Prefect's own events of the run do."""
CHILD_HEARTBEAT = "flowmaestro.child-run.heartbeat"
"""For the child run of a sub-workflow node (a subflow run: no pool)."""
ENDED = ("Completed", "Failed", "Cancelled", "Crashed", "Suspended")
"""States after which a run needs no heartbeat (``Suspended``: a run released by its
worker; ``Paused`` runs are held by a worker, which keeps beating for them)."""
LOST_MESSAGE = "no heartbeat from its worker"
"""How the message of the Crashed state the lost-worker automations write starts."""
CONTINUED_MESSAGE = "scheduled again after a crash: a worker continues it"
"""The message of the Scheduled state the automation "continue" and the sweep write."""


def heartbeat_interval(crash_detect_s: float) -> float:
    """Three beats per detection window: one lost event does not crash a run."""
    return crash_detect_s / 3


def loop_stall_limit(crash_detect_s: float) -> float:
    """How long a worker's event loop may not turn at all before its heartbeats stop: far
    longer than anything a run does between two awaits (the engine yields in long inline
    stretches), so only a process that is wedged for good loses its runs."""
    return max(600.0, 10 * crash_detect_s)


def recovery_automations(pool: str, crash_detect_s: float) -> list[AutomationCore]:
    ended = {f"prefect.flow-run.{state}" for state in ENDED}
    on_pool = {"prefect.resource.role": "work-pool", "prefect.resource.name": pool}
    crash = [
        ChangeFlowRunState(
            state=StateType.CRASHED,
            force=True,
            message=f"{LOST_MESSAGE} for {crash_detect_s:g} s: the worker died or lost its connection",
        )
    ]
    # A run of the pool is watched from the moment Prefect says a worker took it (Pending,
    # Running: events the server itself emits), so a worker that dies before its first
    # heartbeat got out is caught too. Every event of such a run names the pool.
    lost = AutomationCore(
        name=f"flowmaestro {pool}: mark runs of lost workers crashed",
        description=f"A FlowMaestro run of pool {pool!r} whose worker sent no heartbeat for {crash_detect_s:g} s "
        "is Crashed (and then continued by another worker).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=on_pool,
            after={HEARTBEAT, "prefect.flow-run.Pending", "prefect.flow-run.Running"},
            expect={HEARTBEAT, *ended},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_detect_s),
        ),
        actions=crash,
    )
    # Child runs have no pool, so their own events cannot be filtered by it: they are
    # watched from their first heartbeat, which only FlowMaestro workers send.
    lost_child = AutomationCore(
        name="flowmaestro: mark child runs of lost workers crashed",
        description=f"The child run of a FlowMaestro sub-workflow node whose worker sent no heartbeat for "
        f"{crash_detect_s:g} s is Crashed (its parent, continued elsewhere, runs it again).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={CHILD_HEARTBEAT},
            expect={CHILD_HEARTBEAT, *ended},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crash_detect_s),
        ),
        actions=crash,
    )
    resume = AutomationCore(
        name=f"flowmaestro {pool}: continue crashed runs",
        description="A crashed FlowMaestro run is scheduled again; a worker continues it from its journal "
        "(completed nodes are restored, not repeated).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=on_pool,
            expect={"prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, force=True, message=CONTINUED_MESSAGE)],
    )
    return [lost, lost_child, resume]


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
    # An update forgets the runs the trigger was watching (a worker that died just before
    # would go unnoticed), so update only on a real change.
    return any(_normal(getattr(existing, f)) != _normal(getattr(wanted, f)) for f in ("trigger", "actions", "enabled"))


def _normal(value: Any) -> Any:
    """JSON form with sets in a fixed order (a set's order differs from process to process)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_normal(v) for v in value]
        return sorted(items) if all(isinstance(i, str) for i in items) else items
    return value


class HeartbeatEmitter:
    """Beats for every run a worker holds, from a thread of its own.

    A heartbeat says "the process holding this run is alive", not "its event loop is idle":
    a run that keeps the loop busy (a long loop of inline nodes) must not get the other runs
    of its worker marked Crashed. So the beats come from a thread, which Python schedules
    even while the loop's thread computes, and Prefect's events client sends them from its
    own thread too. One thread per worker (Prefect's own flow heartbeat is a thread per run,
    at least 30 s apart).

    A loop that has not turned at all for ``stall_limit_s`` (a deadlock, a call that never
    returns) is a process that no longer runs anything: the beats stop, and its runs are
    continued elsewhere."""

    def __init__(
        self,
        *,
        pool: str,
        interval_s: float,
        stall_limit_s: float | None = None,
        children: Callable[[], Iterable[str]] = tuple,
    ):
        self.pool = pool
        self.pool_id: str | None = None
        """The pool's id, once the worker knows it (events name resources by id)."""
        self.interval_s = interval_s
        self.stall_limit_s = stall_limit_s
        self.children = children
        """Child runs executing in the worker, asked at every beat (from the beating thread)."""
        self.beats = 0
        self.stalled = False
        """Whether the beats stopped because the event loop did not turn for ``stall_limit_s``."""
        self._held: set[str] = set()
        self._let_go: set[str] = set()
        """Runs released (suspended): no beat for them, as held runs or as children, until held again."""
        self._lock = threading.Lock()  # the worker's loop changes _held while the thread reads it
        self._loop_turned = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, run_id: str) -> None:
        """A run the worker took from its pool: beat for it now (a worker may die before the
        next beat) and until ``release``."""
        with self._lock:
            self._held.add(run_id)
            self._let_go.discard(run_id)
        self.beat_for([run_id])

    def release(self, run_id: str) -> None:
        """No more beats for the run: once this returns, the thread sends none (beats are
        emitted under the same lock). A run that lets go of its worker (suspended) is released
        before its suspension: a beat after it would have the run marked crashed."""
        with self._lock:
            self._held.discard(run_id)
            self._let_go.add(run_id)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def beat_for(self, run_ids: Iterable[str], *, child: bool = False) -> None:
        pool = [
            {
                "prefect.resource.id": f"prefect.work-pool.{self.pool_id or self.pool}",
                "prefect.resource.role": "work-pool",
                "prefect.resource.name": self.pool,
            }
        ]
        for run_id in run_ids:
            emit_event(
                event=CHILD_HEARTBEAT if child else HEARTBEAT,
                resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
                related=None if child else pool,
            )
            self.beats += 1

    def beat_once(self) -> None:
        """One beat for every run held and every child run, unless the loop is stalled."""
        stalled = self.stall_limit_s is not None and time.monotonic() - self._loop_turned > self.stall_limit_s
        if stalled and not self.stalled:
            log.error(
                "the worker's event loop has not turned for %.0f s: no more heartbeats, so its runs are "
                "continued elsewhere",
                self.stall_limit_s,
            )
        self.stalled = stalled
        if stalled:
            return
        try:
            children = set(self.children())
        except RuntimeError:  # changed by the loop while read: the next beat reads it again
            children = set()
        with self._lock:
            runs = set(self._held)
            self._let_go &= children | runs  # the others are gone for good: nothing to keep out
            self.beat_for(runs)
            self.beat_for(children - runs - self._let_go, child=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_once()
            except Exception as exc:  # the events client reconnects by itself; keep beating
                log.warning("could not send heartbeats: %s", exc)

    async def run(self) -> None:
        """Beat from a thread until cancelled; meanwhile tell it the loop still turns."""
        context = contextvars.copy_context()  # the worker's Prefect settings, in the thread too
        self._stop.clear()
        self._thread = threading.Thread(
            target=context.run, args=(self._beat,), name="flowmaestro-heartbeats", daemon=True
        )
        self._thread.start()
        try:
            while True:
                self._loop_turned = time.monotonic()
                await asyncio.sleep(self.interval_s / 2)
        finally:
            self._stop.set()


# --- when the automations did not do it, or did it wrongly ------------------------------------------


@dataclass(frozen=True)
class CrashedRun:
    run_id: str
    state_id: str
    """The id of its Crashed state: it is continued only while still in that very state."""
    crashed_at: datetime


SWEEP_WINDOWS = 20
"""A sweep continues runs crashed less than this many grace periods ago (30 min at the
default 90 s): older ones crashed before the worker started sweeping (an upgrade, a pool
without workers for a while), and running them again unasked could repeat what their nodes
did long ago. They stay Crashed, for a person to retry."""


def runs_to_continue(
    crashed: Iterable[CrashedRun], *, now: datetime, grace_s: float, held: Iterable[str]
) -> list[CrashedRun]:
    """The crashed runs a sweep schedules again: crashed at least ``grace_s`` ago (the
    automation continues a run within a second or so; the sweep only catches the ones it
    failed to) and less than ``SWEEP_WINDOWS`` grace periods ago, and not held by this worker
    (those it still executes: ``state_to_restore``)."""
    mine = set(held)
    return [
        run
        for run in crashed
        if run.run_id not in mine and grace_s <= (now - run.crashed_at).total_seconds() < SWEEP_WINDOWS * grace_s
    ]


def written_by_recovery(state: State | None) -> bool:
    """A state the recovery machinery wrote: the lost-worker automations' Crashed, the
    Scheduled of the automation "continue" or of the sweep."""
    if state is None:
        return False
    message = state.message or ""
    return (state.type == StateType.CRASHED and message.startswith(LOST_MESSAGE)) or (
        state.type == StateType.SCHEDULED and message == CONTINUED_MESSAGE
    )


def state_to_restore(current: State | None, history: Iterable[State]) -> State | None:
    """For a run its worker still executes: when its ``current`` state is one recovery wrote
    (so the crash was a false alarm), the state it had before, if that was ``Running`` or
    ``Paused`` (on an approval, its engine waiting); else None, and nothing is changed.
    States recovery did not write (a cancellation, the engine's own) are never overridden.

    The current state is the one the flow run points to, not the newest of ``history``:
    Prefect mints a state's timestamp when the request arrives, so a state proposed before
    another and committed after it (the automation's Scheduled against this worker's set-back)
    sorts before it. A ``current`` missing from ``history`` (it moved between the two reads)
    gives None: the next poll looks again."""
    ordered = sorted(history, key=lambda state: state.timestamp)
    if current is None or not written_by_recovery(current) or current.id not in {s.id for s in ordered}:
        return None
    for state in reversed(ordered):
        if state.id != current.id and not written_by_recovery(state):
            return state if state.type in (StateType.RUNNING, StateType.PAUSED) else None
    return None


class CrashSweeper:
    """Every ``interval_s``, schedules again the runs of the pool that stayed ``Crashed`` for
    ``grace_s``: Prefect runs an automation's action once, and when setting the state fails
    (SQLite's "database is locked" under load) the run would stay Crashed for good. Every
    worker sweeps; ``prefect_compat.continue_crashed_run`` makes one of them win."""

    def __init__(self, *, pool: str, grace_s: float, interval_s: float, held: Callable[[], Iterable[str]] = tuple):
        self.pool = pool
        self.grace_s = grace_s
        self.interval_s = interval_s
        self.held = held
        """The runs this worker executes (asked at every sweep)."""
        self.continued = 0

    async def sweep_once(self, client: Any) -> list[str]:
        found = await prefect_compat.read_crashed_runs(client, self.pool)
        crashed = [CrashedRun(str(run.id), str(run.state.id), run.state.timestamp) for run in found if run.state]
        continued: list[str] = []
        for run in runs_to_continue(crashed, now=datetime.now(UTC), grace_s=self.grace_s, held=self.held()):
            if await prefect_compat.continue_crashed_run(client, run.run_id, run.state_id, CONTINUED_MESSAGE):
                log.warning(
                    "flow run %s was still Crashed %.0f s after it crashed (the automation did not continue "
                    "it): scheduled again",
                    run.run_id,
                    self.grace_s,
                )
                continued.append(run.run_id)
        suspended_before = datetime.now(UTC) - timedelta(seconds=self.grace_s)
        for flow_run in await prefect_compat.read_stranded_delay_releases(client, self.pool, suspended_before):
            # Released while a delay waits, and its worker died before it scheduled the run
            # again: nobody else would (Suspended waits for a Resume, then Prefect fails it).
            if await prefect_compat.continue_delay_release(client, flow_run):
                log.warning("flow run %s was left Suspended on a delay: scheduled for its end", flow_run.id)
                continued.append(str(flow_run.id))
        self.continued += len(continued)
        return continued

    async def run(self) -> None:
        async with get_client() as client:
            while True:
                await asyncio.sleep(self.interval_s)
                try:
                    await self.sweep_once(client)
                except Exception as exc:  # Prefect busy or restarting: the next sweep tries again
                    log.warning("could not sweep crashed runs of pool %s: %s", self.pool, exc)
