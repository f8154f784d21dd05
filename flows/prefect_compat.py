"""Every use of Prefect beyond its plain public API, behind one door.

FlowMaestro leans on a few Prefect behaviours that no public API promises: how the task
engine reports task runs (state events the server turns into task runs), what it calls a
cache hit or a timeout (state *names*), how a forced state moves a flow run, and the flow
engine's entry point for a flow run created beforehand. They were read in, and measured
against, Prefect ``TESTED_PREFECT``; ``tests/test_prefect_compat.py`` checks each one
against a real Prefect server, so a Prefect upgrade that changes one fails there, loudly.

Outside the tested range, inline recording (the riskiest: hand-built task runs) is off,
with one warning: control nodes then run as normal task runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import prefect
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun, TaskRunPolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.flow_engine import run_flow_async
from prefect.states import Cancelled, Cancelling, Completed, Failed, Pending, Running, Scheduled, State
from prefect.utilities.engine import emit_task_run_state_change_event

log = logging.getLogger("flowmaestro.prefect")

TESTED_PREFECT = ">=3.9.1,<3.10"
"""The Prefect versions the uses below were checked against."""


def prefect_version_tested(version: str) -> bool:
    try:
        return SpecifierSet(TESTED_PREFECT).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


@functools.cache  # a fact of the installed Prefect, which does not change while the process runs
def inline_recording_supported() -> bool:
    """Whether the installed Prefect is one inline recording was tested on; the first time it
    is not, a warning says so (once per process)."""
    if prefect_version_tested(prefect.__version__):
        return True
    log.warning("Prefect %s is outside the versions FlowMaestro was tested on (%s): control nodes run as "
                "normal task runs instead of being recorded inline", prefect.__version__, TESTED_PREFECT)
    return False


# --- task runs -----------------------------------------------------------------------------------


def record_task_run(*, name: str, task_key: str, dynamic_key: str, tags: Iterable[str], error: BaseException | None,
                    started: datetime | None, ended: datetime | None) -> str | None:
    """Record work done outside Prefect's task engine as a task run of the current flow run:
    Pending, Running, then Completed (or Failed when ``error``). Prefect's task engine reports
    task runs to the server only as these state-change events (``emit_task_run_state_change_event``),
    and the server's recorder builds the task run from them; emitting the same events costs a
    fraction of a real task run. Returns the task run id, or None outside a flow run."""
    flow_context = FlowRunContext.get()
    if flow_context is None or flow_context.flow_run is None:
        return None
    flow_run_id = flow_context.flow_run.id
    task_run_id = uuid.uuid4()
    pending = Pending()
    pending.timestamp = started or pending.timestamp
    run = TaskRun(
        id=task_run_id, name=name, flow_run_id=flow_run_id, task_key=task_key,
        dynamic_key=f"{dynamic_key}-{task_run_id.hex[:8]}", empirical_policy=TaskRunPolicy(), tags=list(tags),
        task_inputs={}, expected_start_time=pending.timestamp, state=pending, state_type=pending.type,
        state_name=pending.name, created=pending.timestamp,
    )
    # Each state strictly after the one before, as the task engine does (the server orders by time).
    running = Running()
    running.timestamp = pending.timestamp + timedelta(microseconds=1)
    final = Completed() if error is None else Failed(message=str(error))
    final.timestamp = max(ended or final.timestamp, running.timestamp + timedelta(microseconds=1))
    previous = pending
    last_event = emit_task_run_state_change_event(task_run=run, initial_state=None, validated_state=pending)
    for state in (running, final):
        state.state_details.task_run_id = task_run_id
        state.state_details.flow_run_id = flow_run_id
        run.state, run.state_type, run.state_name = state, state.type, state.name
        if state is running:
            run.run_count, run.start_time = 1, state.timestamp
        else:
            run.end_time = state.timestamp
            run.total_run_time = state.timestamp - running.timestamp
        last_event = emit_task_run_state_change_event(task_run=run, initial_state=previous,
                                                      validated_state=state, follows=last_event)
        previous = state
    return str(task_run_id)


def add_tags_to_running_task_run(tags: Iterable[str]) -> None:
    """Add tags to the task run executing now (inside a task's body). Prefect acquires a tag
    concurrency slot for every tag a task has before its run starts, and a new tag set costs
    ~0.65 s the first time (a service thread and client per set), which a tag per node would
    pay for every node. The task engine's later state events carry the task run's tags from
    its ``TaskRun`` object, and the server records them on the task run."""
    context = TaskRunContext.get()
    if context is not None:
        context.task_run.tags = sorted(set(context.task_run.tags) | set(tags))


def is_cached(state: State) -> bool:
    """A completed task run whose result came from the cache: the task engine names that
    Completed state "Cached"."""
    return state.is_completed() and state.name == "Cached"


def is_timed_out(state: State) -> bool:
    """A task run that exceeded its ``timeout_seconds``: the task engine names that Failed
    state "TimedOut"."""
    return state.is_failed() and state.name == "TimedOut"


# --- flow runs -----------------------------------------------------------------------------------


def start_flow_run_in_process(flow: Any, flow_run: FlowRun, parameters: dict[str, Any]) -> asyncio.Task[State]:
    """Run ``flow`` for a flow run created beforehand (so its id is known at once), as an
    asyncio task of this process; the task's result is the run's final state. Calling a flow
    creates its own flow run; the flow engine's ``run_flow_async`` is what takes an existing one."""
    return asyncio.create_task(run_flow_async(flow, flow_run=flow_run, parameters=parameters, return_type="state"))


async def request_cancellation(client: Any, flow_run_id: uuid.UUID | str) -> None:
    """Ask a flow run to stop by setting it Cancelling: an in-process run has no runner to
    kill it, so it watches its own state (flows/flow.py) and ends itself Cancelled, with its
    result. Forced, so no orchestration rule swaps Cancelling for another state (the server
    does, for a run still Scheduled without infrastructure: straight to Cancelled)."""
    await client.set_flow_run_state(flow_run_id, Cancelling(), force=True)


async def mark_cancelled(client: Any, flow_run_id: uuid.UUID | str, message: str) -> None:
    """End a flow run Cancelled that nothing executes (cancelled before a worker started its
    flow, or whose engine gave up on seeing Cancelling): forced, as no engine will."""
    await client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)


async def schedule_again(client: Any, flow_run_id: uuid.UUID | str, message: str) -> None:
    """Put an ended flow run back in its work pool's queue, as the Prefect UI's Retry does:
    a worker executes it again from the top (its journal restores what completed). Forced:
    Prefect's orchestration refuses to leave a final state otherwise."""
    await client.set_flow_run_state(flow_run_id, Scheduled(name="AwaitingRetry", message=message), force=True)


async def end_pause(client: Any, flow_run_id: uuid.UUID, pause_key: str) -> bool:
    """End a pause nobody will answer through Prefect (it was decided another way) by forcing
    the flow run back to Running; the ``pause_flow_run`` waiting on it must be cancelled first,
    since it would read a run input that never comes. Only while the run is still paused on
    that very key (``state_details.pause_key``), so a person's resume at the same moment wins.
    Not Prefect's resume: that insists on the paused form's input, which there is none of.
    Forced, so the server's orchestration rules cannot turn it into anything but Running."""
    flow_run = await client.read_flow_run(flow_run_id)
    state = flow_run.state
    if state is None or state.type != StateType.PAUSED or state.state_details.pause_key != pause_key:
        return False
    await client.set_flow_run_state(flow_run_id, Running(), force=True)
    return True


async def next_schedule_dates(schedule: Any, n: int, start: datetime | None = None) -> list[datetime]:
    """The next ``n`` times (from ``start``, now by default) Prefect's scheduler starts runs
    of ``schedule``, a client schedule (cron, interval or rrule). The client's schedule
    models cannot compute dates; the server's, which the scheduler service itself uses
    (daylight-saving rules included), can: the client model is rebuilt as its server twin."""
    from prefect.server.schemas import schedules as server_schedules

    twin = getattr(server_schedules, type(schedule).__name__).model_validate(schedule.model_dump(mode="json"))
    return list(await twin.get_dates(n=n, start=start))
