"""Every use of Prefect beyond its plain public API, behind one door.

FlowMaestro leans on a few Prefect behaviours that no public API promises: how the task
engine reports task runs (state events the server turns into task runs), what it calls a
cache hit or a timeout (state *names*), how a forced state moves a flow run, the flow
engine's entry point for a flow run created beforehand, how the scheduler keys its runs and
where Prefect keeps the answers to pauses, and the base worker's private poll. No other
module uses a private Prefect name (``tests/test_private_prefect_names.py``). They were read in, and measured
against, Prefect ``TESTED_PREFECT``; ``tests/test_prefect_compat.py`` checks each one
against a real Prefect server, so a Prefect upgrade that changes one fails there, loudly.

Outside the tested range, inline recording (the riskiest: hand-built task runs) is off,
with one warning: control nodes then run as normal task runs.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import prefect
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version
from prefect._internal.compatibility.blocks import call_explicitly_async_block_method
from prefect.client.orchestration import get_client
from prefect.client.schemas import OrchestrationResult
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRunResult
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events.related import related_resources_from_run_context
from prefect.exceptions import Pause
from prefect.filesystems import LocalFileSystem
from prefect.flow_engine import run_flow_async
from prefect.flow_runs import asuspend_flow_run
from prefect.results import ResultRecord, ResultRecordMetadata, aget_default_result_storage
from prefect.serializers import Serializer
from prefect.states import Cancelled, Cancelling, Running, Scheduled, State, to_state_create
from pydantic import Field

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
    log.warning(
        "Prefect %s is outside the versions FlowMaestro was tested on (%s): control nodes run as "
        "normal task runs instead of being recorded inline",
        prefect.__version__,
        TESTED_PREFECT,
    )
    return False


# --- task runs -----------------------------------------------------------------------------------


class TaskRunSender:
    """Sends task-run events and log lines to Prefect in batches (its public ``POST /events``
    and ``POST /logs/``), and runs' summary artifacts (``POST /artifacts/``), from a
    background task: the runs that record pay a dict per node, not a message. One per
    process, shared by its runs (a worker), or one per run; ``close`` sends what is left.
    Until then a run's task runs may appear in Prefect after the run has ended, as they do
    behind Prefect's own recorder."""

    BATCH = 500

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._logs: list[dict[str, Any]] = []
        self._artifacts: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._sender: asyncio.Task[None] | None = None

    def add_event(self, event: dict[str, Any]) -> None:
        self._add(self._events, event)

    def add_log(self, line: dict[str, Any]) -> None:
        self._add(self._logs, line)

    def add_artifact(self, artifact: dict[str, Any]) -> None:
        self._add(self._artifacts, artifact)

    def _add(self, buffer: list[dict[str, Any]], item: dict[str, Any]) -> None:
        buffer.append(item)
        if self._sender is None:
            # A context of its own: a task started inside a flow run would otherwise keep
            # using that run's Prefect client, closed when the run ends.
            self._sender = asyncio.create_task(self._send_forever(), context=contextvars.Context())
        if len(buffer) >= self.BATCH:
            self._wake.set()

    async def _send_forever(self) -> None:
        async with get_client() as client:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass
                self._wake.clear()
                while self._events or self._logs or self._artifacts:
                    if self._events:
                        batch, self._events = self._events[: self.BATCH], self._events[self.BATCH :]
                        await self._post(client, "/events", batch)
                    if self._logs:
                        batch, self._logs = self._logs[: self.BATCH], self._logs[self.BATCH :]
                        await self._post(client, "/logs/", batch)
                    if self._artifacts:  # after the events: the artifact's task runs are there
                        await self._post(client, "/artifacts/", self._artifacts.pop(0))
                if self._closing:
                    return

    async def _post(self, client: Any, route: Any, body: list[dict[str, Any]] | dict[str, Any]) -> None:
        for attempt in range(5):  # a busy or restarting server: try again for ~15 s
            try:
                await client.request("POST", route, json=body)
                return
            except Exception as exc:
                if attempt == 4:
                    what = f"{len(body)} task-run records" if isinstance(body, list) else "an artifact"
                    log.warning("Prefect did not take %s (POST %s): %s", what, route, exc)
                    return
                await asyncio.sleep(2**attempt)

    async def close(self, timeout_s: float = 120.0) -> None:
        """Send what is left (waiting at most ``timeout_s``), then stop."""
        self._closing = True
        if self._sender is None:
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._sender), timeout=timeout_s)
        except TimeoutError:
            self._sender.cancel()
            log.warning(
                "gave up sending %d task-run records and %d artifacts to Prefect after %g s",
                len(self._events) + len(self._logs),
                len(self._artifacts),
                timeout_s,
            )


class TaskRunRecorder:
    """Records work done outside Prefect's task engine as task runs of one flow run, and
    node log lines in the flow run's logs.

    Prefect's task engine reports a task run as three state-change events (Pending, Running,
    then a final state), each a pydantic ``Event`` sent on its own over a websocket; the
    server's recorder builds the task run from them. Here a node that has ended is one event
    carrying its final state (the recorder accepts a task run first seen in a final state),
    built as a plain dict and sent in a batch by a ``TaskRunSender``. A node that goes on
    for a while (a container, a delay) also reports Running when it starts, so the Prefect
    UI shows it meanwhile. Build it with ``task_run_recorder()`` inside a flow run."""

    def __init__(
        self, sender: TaskRunSender, flow_run_id: uuid.UUID, related: list[dict[str, str]], *, logs: bool = True
    ) -> None:
        self._sender = sender
        self._flow_run_id = str(flow_run_id)
        self._related = related
        self._logs_on = logs

    def record(
        self,
        *,
        task_run_id: str,
        name: str,
        task_key: str,
        dynamic_key: str,
        tags: Iterable[str],
        started: datetime,
        ended: datetime | None,
        error: BaseException | None = None,
        upstream: Iterable[str] = (),
        parent: str | None = None,
        attempts: int = 1,
    ) -> None:
        """Report the task run ``task_run_id``: ended (Completed, or Failed with ``error``), or
        Running when ``ended`` is None. ``upstream``: task runs whose results it used (the
        Prefect UI's run graph draws them as edges); ``parent``: the task run it ran inside."""
        if ended is None:
            state_type, state_name, message, at = "RUNNING", "Running", "", started
        elif error is None:
            state_type, state_name, message, at = "COMPLETED", "Completed", "", max(ended, started)
        else:
            state_type, state_name, message, at = "FAILED", "Failed", str(error)[:10_000], max(ended, started)
        tags = sorted(tags)
        inputs: dict[str, list[dict[str, str]]] = {"upstream": [{"input_type": "task_run", "id": i} for i in upstream]}
        if parent:
            inputs["__parents__"] = [{"input_type": "task_run", "id": parent}]
        start_iso, at_iso = started.isoformat(), at.isoformat()
        task_run: dict[str, Any] = {
            "name": name,
            "task_key": task_key,
            "dynamic_key": f"{dynamic_key}-{task_run_id[:8]}",
            "empirical_policy": {},
            "tags": tags,
            "task_inputs": inputs,
            "run_count": attempts,
            "expected_start_time": start_iso,
            "start_time": start_iso,
            "state_details": {},
        }
        if ended is not None:
            task_run["end_time"] = at_iso
            task_run["total_run_time"] = (at - started).total_seconds()
        self._sender.add_event(
            {
                "id": str(uuid.uuid4()),
                "occurred": at_iso,
                "event": f"prefect.task-run.{state_name}",
                "resource": {
                    "prefect.resource.id": f"prefect.task-run.{task_run_id}",
                    "prefect.resource.name": name,
                    "prefect.run-count": str(attempts),
                    "prefect.state-message": message,
                    "prefect.state-name": state_name,
                    "prefect.state-timestamp": at_iso,
                    "prefect.state-type": state_type,
                    "prefect.orchestration": "client",
                },
                "related": self._related
                + [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"} for tag in tags],
                "payload": {
                    "intended": {"from": None, "to": state_type},
                    "initial_state": None,
                    "validated_state": {
                        "type": state_type,
                        "name": state_name,
                        "message": message,
                        "state_details": {},
                        "data": None,
                    },
                    "task_run": task_run,
                },
            }
        )

    def log(self, message: str, *, task_run_id: str | None, level: int = logging.INFO) -> None:
        """A line in the flow run's Prefect logs (attached to ``task_run_id``'s task run)."""
        if self._logs_on:
            self._sender.add_log(
                {
                    "name": "flowmaestro.node",
                    "level": level,
                    "message": message,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "flow_run_id": self._flow_run_id,
                    "task_run_id": task_run_id,
                }
            )

    def markdown_artifact(self, markdown: str, *, key: str, description: str) -> None:
        """A markdown artifact of the flow run (the Prefect UI's Artifacts tab)."""
        self._sender.add_artifact(
            {
                "key": key,
                "type": "markdown",
                "description": description,
                "data": markdown,
                "flow_run_id": self._flow_run_id,
            }
        )


@asynccontextmanager
async def task_run_recorder(
    sender: TaskRunSender | None = None, *, logs: bool = True
) -> AsyncIterator[TaskRunRecorder | None]:
    """A ``TaskRunRecorder`` for the current flow run; None outside one, and when the
    installed Prefect is not one inline recording was tested on (control nodes then run as
    normal task runs, containers are not recorded). Without a ``sender`` (the process's), it
    has one of its own, which sends everything before the context exits."""
    flow_context = FlowRunContext.get()
    if flow_context is None or flow_context.flow_run is None or not inline_recording_supported():
        yield None
        return
    own = sender is None
    sender = sender or TaskRunSender()
    async with get_client() as client:  # the flow run's own client
        # The resources Prefect's own task-run events name (flow run, flow, deployment, work
        # pool...), read once per run: the UI and automations find the events by them.
        related = [r.model_dump(mode="json") for r in await related_resources_from_run_context(client)]
    try:
        yield TaskRunRecorder(sender, flow_context.flow_run.id, related, logs=logs)
    finally:
        if own:
            await sender.close()


def set_inputs_of_running_task_run(upstream: Iterable[str], parent: str | None) -> None:
    """Name the task runs the task run executing now (inside a task's body) used, and the one
    it ran inside, as Prefect's run graph reads them (``task_inputs``). Prefect derives them
    from futures passed as arguments, which FlowMaestro does not use (the engine schedules);
    the task engine's later state events carry the ``TaskRun`` object's inputs, and the
    server records them, as for tags."""
    context = TaskRunContext.get()
    if context is None:
        return
    inputs = dict(context.task_run.task_inputs)
    inputs["upstream"] = [TaskRunResult(id=uuid.UUID(i)) for i in upstream]
    if parent:
        inputs["__parents__"] = [TaskRunResult(id=uuid.UUID(parent))]
    context.task_run.task_inputs = inputs


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


def leave_sigterm_to_the_worker() -> None:
    """Stop Prefect's flow engine from installing its own SIGTERM handler around every flow
    run (``capture_sigterm``): in a worker running many flow runs in one process, that handler
    replaces the worker's, and a SIGTERM then raises ``TerminationSignal`` at a random await
    of the event loop (tracebacks, runs left Crashed) instead of starting the worker's drain.
    The handler serves Prefect's runner, which kills a flow run's own process; this worker
    stops its runs itself. Process-wide: call it only in a worker process."""
    import prefect.flow_engine

    prefect.flow_engine.capture_sigterm = nullcontext  # type: ignore[assignment]


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


def schedule_id_of(flow_run: Any) -> str | None:
    """The id of the deployment schedule whose run this is, or None for a run started
    otherwise. Prefect's scheduler creates a schedule's runs ``auto_scheduled`` with the
    idempotency key ``scheduled <deployment id> <schedule id> <time>`` (its
    ``models.deployments``); no field of the run names the schedule."""
    if not getattr(flow_run, "auto_scheduled", False):
        return None
    parts = (getattr(flow_run, "idempotency_key", None) or "").split(" ")
    return parts[2] if len(parts) > 3 and parts[0] == "scheduled" else None


async def read_pause_answers(
    client: Any, flow_run_id: uuid.UUID, pause_key: str, limit: int = 50
) -> list[tuple[str, str]]:
    """The answers (input key, JSON text) given through Prefect's Resume (its UI, ``resume_flow_run``)
    to every pause or suspension of a flow run on ``pause_key`` or one of its fresh
    variants (``fresh_pause_key``). Prefect keeps each as the run input
    ``<state name>-<pause key>-response`` (``prefect.input.keyset_from_paused_state``)."""
    answers: list[tuple[str, str]] = []
    for state_name in ("paused", "suspended"):
        found = await client.filter_flow_run_input(
            flow_run_id, key_prefix=f"{state_name}-{pause_key}", limit=limit, exclude_keys=set()
        )
        answers += [(item.key, item.value) for item in found if item.key.endswith("-response")]
    return answers


def is_released(state: State | None) -> bool:
    """A flow run its process let go of while it waits (``release_flow_run``: Prefect's
    suspend): nothing polls for its answer; ``schedule_released`` puts it back."""
    return state is not None and state.type == StateType.PAUSED and bool(state.state_details.pause_reschedule)


async def schedule_released(client: Any, flow_run_id: uuid.UUID | str, message: str) -> None:
    """Schedule again a run ``is_released`` says its process let go of, for any worker to
    continue it (named ``Resuming``). Forced: Prefect's own resume of a suspended run insists
    on the input of its paused form, and an answer that came another way has none."""
    await client.set_flow_run_state(flow_run_id, Scheduled(name="Resuming", message=message), force=True)


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


DELAY_RELEASE = "fm-delay:"
"""How the pause key of a run released while a delay waits starts (``release_flow_run``); the
colon keeps it apart from approval pause keys (letters, digits and dashes)."""
DELAY_RELEASE_STATE = "Delayed"
"""The name of the Scheduled state such a run comes back in."""


def is_delay_released(state: State | None) -> bool:
    """A flow run released until a given time (``release_flow_run`` with ``until``: a delay,
    or an approval with a timeout) and not yet due: scheduled again now, it continues at once
    (an approval answered before its timeout)."""
    return (
        state is not None
        and state.type == StateType.SCHEDULED
        and state.name == DELAY_RELEASE_STATE
        and state.state_details.scheduled_time is not None
        and state.state_details.scheduled_time > datetime.now(UTC)
    )


def worker_prefetch_s() -> float:
    """How early Prefect's workers take a scheduled run (``PREFECT_WORKER_PREFETCH_SECONDS``,
    10 s by default): a delay released for less than this would be taken back at once."""
    from prefect.settings import PREFECT_WORKER_PREFETCH_SECONDS

    return float(PREFECT_WORKER_PREFETCH_SECONDS.value())


async def fresh_pause_key(client: Any, flow_run_id: uuid.UUID, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``...: Prefect pauses (and suspends) a run at most
    once per key, and a run executed again may pause again where an earlier execution did."""
    used = set((await client.read_flow_run(flow_run_id)).empirical_policy.pause_keys or ())
    key, n = base, 1
    while key in used:
        n += 1
        key = f"{base}-{n}"
    return key


async def release_flow_run(
    client: Any,
    flow_run_id: uuid.UUID,
    key: str,
    *,
    wait_for_input: Any = None,
    until: datetime | None = None,
    holding: Callable[[bool], None] = lambda held: None,
    message: str | None = None,
) -> NoReturn:
    """Let go of the flow run this process executes: Prefect's suspend ends it ``Suspended``
    (pause key ``key``, fresh: ``fresh_pause_key``; ``wait_for_input``: the form the Prefect
    UI's Resume shows) and raises ``Pause``, which the flow lets out: Prefect's engine then
    changes no state, and the worker counts the run as released.

    With ``until``, the run is then forced ``Scheduled`` for that time (named
    ``DELAY_RELEASE_STATE``): any worker takes it then. Suspended first, not Scheduled
    straight from Running: the lost-worker automation counts ``Suspended`` as an end (its
    heartbeats stop now) but not ``Scheduled``, and would mark the run Crashed. The
    suspension's ``pause_timeout`` is ``until``, so a run left Suspended (its worker died in
    between) is found by the sweep (``CrashSweeper``).

    ``holding(False)`` is called just before the suspension (the worker stops the run's
    heartbeats: one sent after it would start the automation's watch again, and the run
    would be marked Crashed), ``holding(True)`` if the run was not suspended after all.
    ``message``: the Scheduled state's, when it is not a delay's (a worker handing its run back)."""
    timeout = None
    if until is not None:
        timeout = max(1, int((until - datetime.now(UTC)).total_seconds() + 0.999))
    holding(False)
    try:
        await asuspend_flow_run(wait_for_input=wait_for_input, key=key, timeout=timeout)
    except Pause:
        if until is not None:
            await schedule_delayed(client, flow_run_id, until, message)
        raise
    except BaseException:
        holding(True)
        raise
    holding(True)
    raise RuntimeError("the run was not suspended")  # Prefect answers Pause or refuses


async def hand_back_flow_run(
    client: Any, flow_run_id: uuid.UUID, *, holding: Callable[[bool], None], message: str
) -> NoReturn:
    """Let go of a flow run this process stopped before its end (a worker's drain), to be
    continued by another worker at once: released as a delay is (``release_flow_run``, due
    now), so the lost-worker automation sees an end, not a silence. A run still paused on
    an approval (held in memory) is set Running first: Prefect suspends only a running run;
    an answer already given is a run input, which the next execution finds."""
    state = (await client.read_flow_run(flow_run_id)).state
    if state is not None and state.type == StateType.PAUSED:
        await client.set_flow_run_state(flow_run_id, Running(), force=True)
    key = await fresh_pause_key(client, flow_run_id, DELAY_RELEASE + "handed-back")
    await release_flow_run(client, flow_run_id, key, until=datetime.now(UTC), holding=holding, message=message)


async def schedule_delayed(
    client: Any, flow_run_id: uuid.UUID | str, until: datetime, message: str | None = None
) -> None:
    """Put a run released while a delay waits (or handed back) in its pool's queue for
    ``until``. Forced: Prefect's orchestration keeps a Suspended run for its Resume otherwise."""
    await client.set_flow_run_state(
        flow_run_id,
        Scheduled(
            scheduled_time=until,
            name=DELAY_RELEASE_STATE,
            message=message or f"released while a delay waits: continues at {until.isoformat()}",
        ),
        force=True,
    )


async def read_stranded_delay_releases(
    client: Any, pool: str, suspended_before: datetime, page: int = 200
) -> list[FlowRun]:
    """Runs of work pool ``pool`` still ``Suspended`` on a delay (``release_flow_run``) since
    before ``suspended_before``: their worker died between suspending them and scheduling
    them, which it does within a second. Found by when they were suspended, not when their
    delay ends: Prefect fails a paused run once its pause times out, so waiting for the end
    would leave it to Prefect. Every paused run of the pool is read (approvals too: Prefect
    cannot filter on the pause key), a page at a time."""
    found: list[FlowRun] = []
    while True:
        batch = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            sort=FlowRunSort.ID_DESC,
            limit=page,
            offset=len(found),
        )
        found += batch
        if len(batch) < page:
            break
    return [
        run
        for run in found
        if run.state is not None
        and run.state.state_details.pause_reschedule
        and (run.state.state_details.pause_key or "").startswith(DELAY_RELEASE)
        and run.state.state_details.pause_timeout is not None
        and run.state.timestamp < suspended_before
    ]


async def continue_delay_release(client: Any, flow_run: FlowRun) -> bool:
    """Schedule again a run ``read_stranded_delay_releases`` found (for its delay's end), while it is still in that very
    Suspended state (read again just before); False when it moved meanwhile."""
    state = flow_run.state
    assert state is not None and state.state_details.pause_timeout is not None
    now = (await client.read_flow_run(flow_run.id)).state
    if now is None or str(now.id) != str(state.id):
        return False
    await schedule_delayed(client, flow_run.id, state.state_details.pause_timeout)
    return True


async def read_crashed_runs(client: Any, pool: str, limit: int = 200) -> list[FlowRun]:
    """The flow runs of work pool ``pool``'s deployments whose state is ``Crashed`` (child
    runs of sub-workflow nodes have no pool: their parent runs them again), the most recently
    expected first."""
    return list(
        await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
    )


async def continue_crashed_run(
    client: Any, flow_run_id: uuid.UUID | str, crashed_state_id: uuid.UUID | str, message: str
) -> bool:
    """Set ``Scheduled`` a flow run that is still in the ``Crashed`` state ``crashed_state_id``
    (what the automation "continue crashed runs" does); False when it is no longer in that
    state, or another worker continued it first.

    Prefect has no compare-and-set on a run's state, so two guards: the state is read again
    just before, and the proposal is not forced but carries a ``transition_id`` derived from
    the crashed state, which Prefect's ``PreventDuplicateTransitions`` rule rejects when the
    run already made that very transition (two workers sweeping at once). A non-forced
    ``Crashed`` -> ``Scheduled`` is what Prefect's ``HandleFlowTerminalStateTransitions``
    allows a run with a deployment, as for a retry. Checked against real servers (SQLite,
    PostgreSQL) in ``tests/security/test_worker_dos.py``."""
    flow_run = await client.read_flow_run(flow_run_id)
    state = flow_run.state
    if state is None or state.type != StateType.CRASHED or str(state.id) != str(crashed_state_id):
        return False
    proposed = to_state_create(Scheduled(message=message))
    proposed.state_details.flow_run_id = uuid.UUID(str(flow_run_id))
    # The client's set_flow_run_state gives every proposal a fresh transition_id: posted here.
    proposed.state_details.transition_id = uuid.uuid5(uuid.NAMESPACE_URL, f"flowmaestro:continue:{crashed_state_id}")
    response = await client.request(
        "POST",
        "/flow_runs/{id}/set_state",
        path_params={"id": str(flow_run_id)},
        json={"state": proposed.model_dump(mode="json", serialize_as_any=True), "force": False},
    )
    return OrchestrationResult.model_validate(response.json()).status == SetStateStatus.ACCEPT


async def restore_state(client: Any, flow_run_id: uuid.UUID | str, earlier: State, message: str) -> None:
    """Set a flow run back to a copy of its ``earlier`` state (``Running``, or ``Paused`` with
    its pause key, so a pause waiting in the engine goes on waiting), for a run its worker
    still executes while the recovery machinery wrongly moved it. Forced: the run left
    ``Running`` for ``Crashed``, a final state orchestration does not leave for ``Paused``."""
    details = earlier.state_details.model_copy(update={"transition_id": None})
    await client.set_flow_run_state(
        flow_run_id, State(type=earlier.type, name=earlier.name, message=message, state_details=details), force=True
    )


async def next_schedule_dates(schedule: Any, n: int, start: datetime | None = None) -> list[datetime]:
    """The next ``n`` times (from ``start``, now by default) Prefect's scheduler starts runs
    of ``schedule``, a client schedule (cron, interval or rrule). The client's schedule
    models cannot compute dates; the server's, which the scheduler service itself uses
    (daylight-saving rules included), can: the client model is rebuilt as its server twin."""
    from prefect.server.schemas import schedules as server_schedules

    twin = getattr(server_schedules, type(schedule).__name__).model_validate(schedule.model_dump(mode="json"))
    return list(await twin.get_dates(n=n, start=start))


def cron_dates(schedule: Any, n: int) -> list[datetime]:
    """``next_schedule_dates`` of a cron schedule, without an event loop (for a thread):
    the server twin's date generator is synchronous under its async wrapper."""
    from prefect.server.schemas import schedules as server_schedules

    twin = server_schedules.CronSchedule.model_validate(schedule.model_dump(mode="json"))
    return sorted(twin._get_dates_generator(n=n))


# --- results -------------------------------------------------------------------------------------
#
# A flow run's state in Prefect says where its result is (``storage_key``, ``storage_block_id``)
# and with which serializer to read it; whoever can set a state through Prefect's API chooses
# both, and Prefect's own ``State.result()`` obeys: a "pickle" serializer unpickles the file (code
# execution in the reading process), and even Prefect's "json" serializer imports and calls
# any class a ``__class__`` key names. So FlowMaestro reads results through ``run_result``
# only, and persists its flows' results with ``ResultJSON``: plain JSON, nothing else.


class ResultJSON(Serializer):
    """The serializer of FlowMaestro's flow results: ``json.dumps``/``json.loads`` and nothing
    more (no object hooks, no imports). Run results are JSON already (the store keeps them so);
    a value JSON cannot hold is written as its ``str``."""

    type: str = Field(default="flowmaestro-json", frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=str).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob)


RESULT_SERIALIZER = ResultJSON()


class UntrustedResult(Exception):
    """A run's result that ``run_result`` refuses to read (a serializer other than
    ``ResultJSON``, another storage, data that is no result record)."""


async def run_result(state: State) -> Any:
    """The value a flow or task run ended with, never unpickled nor decoded by Prefect:

    - held in memory by this process's engine (a run it executed): that very value;
    - kept in result storage (a state read back from the server): read as plain JSON, only
      when both the state and the stored record name ``ResultJSON``, and only from this
      process's default result storage;
    - no data (a run that failed before it had a result): None.

    Anything else raises ``UntrustedResult``: data set through Prefect's API is not ours."""
    data = state.data
    if data is None:
        return None
    if isinstance(data, ResultRecord):
        return data.result
    if not isinstance(data, ResultRecordMetadata):
        raise UntrustedResult(f"the state carries {type(data).__name__} data, not a result record")
    if data.serializer.type != RESULT_SERIALIZER.type or not data.storage_key:
        raise UntrustedResult(f"the result's serializer is {data.serializer.type!r}, not {RESULT_SERIALIZER.type!r}")
    storage = await aget_default_result_storage()
    if data.storage_block_id is not None and data.storage_block_id != getattr(storage, "_block_document_id", None):
        raise UntrustedResult("the result is kept in another storage than this process's result storage")
    try:
        stored = json.loads(await read_path(storage, data.storage_key))
    except Exception as exc:  # unreadable, or not JSON: nothing to trust either
        raise UntrustedResult(f"the stored result could not be read as JSON: {exc}") from exc
    # Prefect writes the serialized value alone (the state holds the metadata), or a whole
    # record (metadata and value) when no metadata storage is configured.
    if isinstance(stored, dict) and stored.keys() == {"metadata", "result"}:
        serializer = (
            (stored["metadata"] or {}).get("serializer", {}).get("type")
            if isinstance(stored["metadata"], dict)
            else None
        )
        if serializer != RESULT_SERIALIZER.type or not isinstance(stored["result"], str):
            raise UntrustedResult(f"the stored record's serializer is {serializer!r}, not {RESULT_SERIALIZER.type!r}")
        return json.loads(stored["result"])
    return stored


async def read_path(storage: Any, path: str) -> bytes:
    """The content at ``path`` of a storage block: storage blocks differ in whether
    ``read_path`` is async (prefect issue #15008)."""
    return await call_explicitly_async_block_method(storage, "read_path", (path,), {})


# --- the worker ----------------------------------------------------------------------------------


def _polling_worker_class() -> type:
    """``PollingWorker``, built on first use: importing Prefect's workers costs 0.1-0.2 s,
    which a process that runs no worker (the API, ``flowmaestro run``) does not pay."""
    from prefect.workers.base import BaseWorker

    # abc.ABC: Prefect registers every worker class by its ``type``, but an abstract one.
    class PollingWorker(BaseWorker, abc.ABC):  # type: ignore[type-arg]
        """Prefect's ``BaseWorker`` with public hooks for what FlowMaestro's worker changes:

        - ``filter_due(entries)``: the scheduled runs a poll found (``entry.flow_run``),
          before they are submitted; it returns those to submit (Prefect's private
          ``_get_scheduled_flow_runs`` is the query);
        - ``work_pool_id``, ``submitting_ids`` (runs taken and not yet Pending), ``logger``;
        - ``description``: what the worker type says of itself (``get_description``, which
          reads a private ``_description`` otherwise).
        """

        description = ""

        @classmethod
        def get_description(cls) -> str:
            return cls.description

        async def filter_due(self, due: list[Any]) -> list[Any]:
            return due

        async def not_taken(self, flow_run: FlowRun) -> None:
            """A run this worker took that Prefect did not let go Pending (cancelled by the
            deployment's concurrency limit, taken by another worker...)."""

        async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
            taken: bool = await super()._propose_pending_state(flow_run)
            if not taken:
                await self.not_taken(flow_run)
            return taken

        async def _get_scheduled_flow_runs(self) -> list[Any]:
            return await self.filter_due(list(await super()._get_scheduled_flow_runs()))

        @property
        def work_pool_id(self) -> str | None:
            """The work pool's id, once the worker has read its pool (after its first poll)."""
            return str(self._work_pool.id) if self._work_pool is not None else None

        @property
        def synced(self) -> bool:
            """Whether the worker has synced with its pool: polls before that find nothing."""
            return bool(self._has_successfully_synced)

        @property
        def submitting_ids(self) -> set[Any]:
            """Ids of the flow runs this worker took and is still submitting (not yet Pending)."""
            return set(self._submitting_flow_run_ids)

        @property
        def logger(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
            return self._logger

        async def _propose_submitting_state(self, flow_run: Any) -> None:
            """No ``Submitting`` state: Prefect 3.9's worker proposes it between Pending and
            the infrastructure's start, a Pending sub-state for its UI. A run of ours starts
            in this process at once; the Pending proposal is what keeps a second worker from
            taking the run (core policy: a second Pending is refused), so one request and
            one state row fewer per run lose no guarantee."""
            return None

    PollingWorker.__qualname__ = "PollingWorker"
    return PollingWorker


def _in_process_job_configuration_class() -> type:
    """``InProcessJobConfiguration``, built on first use like ``PollingWorker``."""
    from prefect.workers.base import BaseJobConfiguration

    class InProcessJobConfiguration(BaseJobConfiguration):
        """The job configuration of a worker that runs flow runs in its own process: nothing
        in it is used to start the run, so it is built from the work pool's template alone.
        Prefect's ``resolve_for_flow_run`` reads the run's deployment (the worker has just
        read it to check that it exists) and its flow again, two requests per run, for job
        variables and the names that label the worker's own submitted/executed events; those
        events still name the flow run, and through it its deployment and flow."""

        @classmethod
        async def resolve_for_flow_run(
            cls,
            flow_run: FlowRun,
            *,
            client: Any,
            work_pool: Any,
            worker_name: str,
            worker_id: uuid.UUID | None = None,
            deployment: Any = None,
        ) -> Any:
            configuration: Any = await cls.from_template_and_values(
                base_job_template=work_pool.base_job_template, values={}, client=client
            )
            configuration.prepare_for_flow_run(
                flow_run=flow_run,
                deployment=deployment,
                flow=None,
                work_pool=work_pool,
                worker_name=worker_name,
                worker_id=worker_id,
            )
            return configuration

    InProcessJobConfiguration.__qualname__ = "InProcessJobConfiguration"
    return InProcessJobConfiguration


# --- the worker's wake-ups and suspensions -------------------------------------------------------


@functools.cache  # a fact of the installed Prefect, which does not change while the process runs
def worker_events_supported() -> bool:
    """Whether the worker may lean on what ``scheduled_runs_of_pool`` and
    ``leave_suspensions_to_the_worker`` assume of Prefect (tested versions only); the first
    time it may not, a warning says so: the worker then polls only, and keeps Prefect's
    per-run suspension observer."""
    if prefect_version_tested(prefect.__version__):
        return True
    log.warning(
        "Prefect %s is outside the versions FlowMaestro was tested on (%s): workers poll for new runs "
        "without listening to Prefect's events, and keep Prefect's per-run suspension observer",
        prefect.__version__,
        TESTED_PREFECT,
    )
    return False


SCHEDULED_STATE_NAMES = ("Scheduled", "AwaitingRetry", "Resuming", DELAY_RELEASE_STATE, "Late")
"""The names of the Scheduled states a run comes to its pool in: created (``Scheduled``),
retried (``AwaitingRetry``, also the API's retry and the Prefect UI's), an approval answered
while released (``Resuming``), released or handed back (``Delayed``), left late (``Late``).
Not ``AwaitingConcurrencySlot``: the worker itself put it there, and it waits for a slot."""


async def scheduled_runs_of_pool(pool_id: str, connected: Callable[[], None]) -> AsyncGenerator[str, None]:
    """The ids of the flow runs of work pool ``pool_id`` that go into a Scheduled state, as
    Prefect's event stream tells them (one websocket, ``/api/events/out``), from when it is
    connected (``connected()`` is called then). Prefect's server names a flow run's
    state-change event ``prefect.flow-run.<state name>`` and relates it to the run's work pool
    (``prefect.work-pool.<id>``), with the state's type as ``prefect.state-type``: the filter
    and the check below lean on that, read in Prefect's ``server.models.events``. The
    subscriber reconnects by itself a few times (asking for the events it missed) and raises
    when it gives up; a clean close ends the iteration."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    event_filter = EventFilter(  # type: ignore[call-arg]  # the other fields have defaults
        event=EventNameFilter(name=[f"prefect.flow-run.{name}" for name in SCHEDULED_STATE_NAMES]),  # type: ignore[call-arg]
        any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{pool_id}"]),  # type: ignore[call-arg]
    )
    async with get_events_subscriber(filter=event_filter, reconnection_attempts=3) as subscriber:
        connected()
        async for event in subscriber:
            if event.resource.get("prefect.state-type") == StateType.SCHEDULED.value:
                yield event.resource.id.removeprefix("prefect.flow-run.")


@contextmanager
def _no_suspension_observer(*args: Any, **kwargs: Any) -> Iterator[None]:
    yield


def leave_suspensions_to_the_worker() -> bool:
    """Stop Prefect's flow engine from starting its suspension observer around every flow run
    of a deployment (``observe_flow_run_suspension``): a thread with its own event loop,
    Prefect client and events websocket per run, which the engine waits for and joins while
    blocking the event loop all runs of a worker share (about 115 ms at each start and end,
    ``benchmarks/prefect_observer.py``), and a ``GET /flow_runs/{id}`` per run. It notices a
    run suspended from outside its process (``suspend_flow_run(flow_run_id=...)``); a run
    suspending itself (FlowMaestro's releases, ``release_flow_run``) raises ``Pause`` without
    it. The worker notices outside suspensions instead, in the one read of all its runs'
    states it makes anyway (``mark_suspended``). Process-wide: call it only in a worker
    process. False (nothing changed) outside the tested Prefect versions."""
    if not worker_events_supported():
        return False
    import prefect.flow_engine

    if not hasattr(prefect.flow_engine, "observe_flow_run_suspension"):
        return False
    prefect.flow_engine.observe_flow_run_suspension = _no_suspension_observer  # type: ignore[assignment]
    return True


def mark_suspended(flow_run: FlowRun) -> bool:
    """Tell the flow engine executing ``flow_run`` in this process that the run was suspended
    from outside, as Prefect's suspension observer does: the engine raises ``Pause`` at its
    next step and lets go of the run. False when the run is not ``Suspended`` or no engine of
    this process executes it."""
    from prefect._flow_run_suspension import is_suspended_flow_run_state, mark_flow_run_suspension_requested

    state = flow_run.state
    if state is None or not is_suspended_flow_run_state(state):
        return False
    return bool(mark_flow_run_suspension_requested(flow_run.id, state))


async def with_default_result_storage(a_flow: Any) -> Any:
    """``a_flow`` with Prefect's default result storage resolved once, now: otherwise the flow
    engine resolves it for every flow run (``GET /admin/storage``, the server's default
    storage block, one request per run). The same storage a run would have found, read when
    the worker starts: a server default changed later takes effect at the next start. A flow
    takes a saved block (the server's default) or a path (a local directory: Prefect's own
    default, ``PREFECT_LOCAL_STORAGE_PATH``, is no saved block)."""
    storage = await aget_default_result_storage()
    if getattr(storage, "_block_document_id", None) is not None:
        return a_flow.with_options(result_storage=storage)
    if isinstance(storage, LocalFileSystem):
        return a_flow.with_options(result_storage=Path(storage.basepath))
    return a_flow  # neither: left to the engine, run by run


_LAZY_CLASSES: dict[str, Callable[[], type]] = {
    "PollingWorker": _polling_worker_class,
    "InProcessJobConfiguration": _in_process_job_configuration_class,
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_CLASSES:
        cls = _LAZY_CLASSES[name]()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
