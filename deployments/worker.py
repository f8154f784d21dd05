"""The FlowMaestro worker: Prefect's worker machinery, runs in the worker's own event loop.

Prefect's process worker starts a fresh Python process per flow run, and importing
Prefect and FlowMaestro costs 1-2 s of every run (measured in ``benchmarks/api.py``).
Canvas runs spend most of their time waiting on I/O, so this worker runs each flow run
as an asyncio task of its own process, up to ``limit`` at once, and keeps everything
warm: imports, the Prefect client, the event log and database pools.

All the rest is Prefect's ``BaseWorker``: polling the work pool, the work-pool heartbeat,
the concurrency limit, proposing Pending, the worker's page in the Prefect UI. What a
process boundary would give for free is done here:

- cancellation: one watcher per worker reads the states of all its runs at once (instead
  of every run polling its own), and a cancelled run is stopped by its flow, which
  records it as cancelled;
- SIGTERM/SIGINT stop polling, let the runs in flight finish for ``grace_s``, then hand
  back what is left (running, or paused on an approval it holds): each is stopped, put
  back ``Scheduled`` and continued by another worker from its journal;
- liveness: heartbeats for every run it holds, so that a run whose worker died is found
  and continued by another, a sweep of the pool's runs left Crashed, and a run it still
  executes set back when it was marked Crashed by mistake (``deployments.recovery``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, FlowRun, StateType
from prefect.exceptions import Pause
from prefect.flows import Flow
from prefect.workers.base import BaseVariables, BaseWorkerResult

from builder.plan_cache import PlanCache
from deployments.catch_up import missed_to_skip, schedule_of, scheduled_time
from deployments.recovery import (
    CrashSweeper,
    HeartbeatEmitter,
    ensure_recovery_automations,
    heartbeat_interval,
    loop_stall_limit,
    state_to_restore,
    written_by_recovery,
)
from deployments.run_store import SqlRunStore
from deployments.run_wakeups import RunWakeups
from deployments.settings import WorkerSettings
from deployments.settings_fingerprint import settings_fingerprint, tagged_name
from deployments.worker_metrics import MetricsServer, track_slots
from deployments.workflow_deployments import DEFAULT_POOL, WORKER_TYPE
from flows.observing import Observability
from flows.pauses import is_pause_requested
from flows.prefect_compat import (
    InProcessJobConfiguration,
    PollingWorker,
    leave_sigterm_to_the_worker,
    leave_suspensions_to_the_worker,
    mark_cancelled,
    mark_suspended,
    restore_state,
    schedule_id_of,
    start_flow_run_in_process,
    with_default_result_storage,
    worker_events_supported,
)
from flows.run_context import CancelSignals, RunContext
from flows.run_metrics import RunMetrics
from node_handlers.services import HandlerServices
from store.credentials import Credentials
from store.db import sessions
from store.secrets import SecretBox

AWAITING_SLOT = "AwaitingConcurrencySlot"
"""The Scheduled state Prefect puts a run in when its deployment's limit is reached (ENQUEUE)."""


class FlowMaestroJobConfiguration(InProcessJobConfiguration):
    """Nothing to configure per run: runs execute in the worker's process."""


class FlowMaestroVariables(BaseVariables):
    pass


class FlowMaestroWorkerResult(BaseWorkerResult):
    pass


class FlowMaestroWorker(PollingWorker):
    type = WORKER_TYPE
    job_configuration = FlowMaestroJobConfiguration
    job_configuration_variables = FlowMaestroVariables
    description = "Runs FlowMaestro canvas workflows as asyncio tasks of the worker's own process."

    def __init__(
        self,
        *,
        flow: Flow[..., Any],
        work_pool_name: str = DEFAULT_POOL,
        limit: int = 20,
        cancel_poll_s: float = 1.0,
        name: str | None = None,
        on_cancel: Callable[[str], None] | None = None,
        heartbeats: HeartbeatEmitter | None = None,
        catch_up: str = "latest",
        late_after_s: float = 60.0,
        on_hand_back: Callable[[str], None] | None = None,
        on_skipped: Callable[[FlowRun, str], Awaitable[None]] | None = None,
        on_pause: Callable[[str], None] | None = None,
        watch_suspensions: bool = False,
        **kwargs: Any,
    ):
        """``flow`` is the generic flow bound to this worker's run context; ``on_cancel``
        tells that context that a run was cancelled in Prefect (the flow then stops it);
        ``heartbeats`` beats for the runs it holds."""
        super().__init__(
            work_pool_name=work_pool_name,
            limit=limit,
            name=name,
            base_job_template=self.get_default_base_job_template(),
            **kwargs,
        )
        self.flow = flow
        self.pool_name = work_pool_name
        self.cancel_poll_s = cancel_poll_s
        self.on_cancel = on_cancel
        self.on_hand_back = on_hand_back
        self.on_skipped = on_skipped
        self.on_pause = on_pause
        """Told of a run asked to pause (its flow run tagged, ``flows.pauses``), by the watcher
        that reads the states of all the worker's runs at once."""
        self.heartbeats = heartbeats
        self.watch_suspensions = watch_suspensions
        """Whether its watcher tells a run suspended from outside to let go (``mark_suspended``):
        set when Prefect's per-run suspension observer is off (``leave_suspensions_to_the_worker``)."""
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.draining = False
        self._watcher: asyncio.Task[None] | None = None
        self.identifier = f"{socket.gethostname()}:{os.getpid()}"
        self.catch_up, self.late_after = catch_up, timedelta(seconds=late_after_s)
        self._queue_of: dict[Any, str | None] = {}
        """The work queue of each run this worker took and is still submitting."""
        self._polling = asyncio.Lock()
        """One poll at a time: the regular one and those Prefect's events start (``RunWakeups``)."""
        self._taking: Callable[[str], bool] | None = None
        """During a poll an event started: which due runs it may take."""
        self._deployments: dict[Any, Any] = {}
        """The deployments the poll under way read (each once per poll)."""

    def held(self) -> list[str]:
        """The runs this worker executes now (a crash sweep leaves them alone)."""
        return list(self.running)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        return await self._poll(None)

    async def poll_for(self, answers: Callable[[str], bool]) -> list[FlowRun]:
        """A poll that takes only the due runs ``answers`` names (``RunWakeups``: the runs
        this worker answers the events of; the others are other workers' to take)."""
        return await self._poll(answers)

    async def _poll(self, taking: Callable[[str], bool] | None) -> list[FlowRun]:
        if self.draining:  # shutting down: leave new runs to other workers
            return []
        async with self._polling:
            self._deployments, self._taking = {}, taking
            try:
                return await super().get_and_submit_flow_runs()
            finally:
                self._taking = None

    async def online_peers(self) -> list[str]:
        """The names of the pool's workers that sent a heartbeat lately (this one among them
        once it has): Prefect marks a silent worker offline only after three heartbeat
        intervals, read here as two and a half."""
        since = datetime.now(UTC) - timedelta(seconds=2.5 * float(self.heartbeat_interval_seconds))
        workers = await self.client.read_workers_for_work_pool(self.pool_name)
        return [w.name for w in workers if w.last_heartbeat_time is not None and w.last_heartbeat_time >= since]

    async def _deployment(self, deployment_id: Any) -> Any:
        """A deployment the filters of this poll need, read once per poll (both filters
        read the same ones)."""
        if deployment_id not in self._deployments:
            self._deployments[deployment_id] = await self.client.read_deployment(deployment_id)
        return self._deployments[deployment_id]

    async def filter_due(self, due: list[Any]) -> list[Any]:
        """The runs Prefect's poll found due, less the missed scheduled runs the catch-up
        policy does not start (deployments/catch_up.py); those end Cancelled, saying why.
        A poll an event started considers only the runs it may take (``poll_for``)."""
        taking = self._taking
        if taking is not None:
            due = [entry for entry in due if taking(str(entry.flow_run.id))]
        skip = missed_to_skip([entry.flow_run for entry in due], datetime.now(UTC), self.catch_up, self.late_after)
        for flow_run in skip:
            reason = (
                f"missed while no worker ran (scheduled for "
                f"{scheduled_time(flow_run)}); FLOWMAESTRO_SCHEDULE_CATCH_UP={self.catch_up}"
            )
            try:
                await mark_cancelled(self.client, flow_run.id, reason)
                await self._skipped(flow_run, reason)
            except Exception as exc:  # left for the next poll
                self.logger.warning("could not skip missed run %s: %s", flow_run.id, exc)
        skipped = {flow_run.id for flow_run in skip}
        due = [entry for entry in due if entry.flow_run.id not in skipped]
        early = await self._early_for_their_limit([entry.flow_run for entry in due])
        due = [entry for entry in due if entry.flow_run.id not in early]
        for flow_run in await self._beyond_the_queue([entry.flow_run for entry in due]):
            reason = "overlap queue: a run of this workflow already waits for the one going to end (at most one waits)"
            try:
                await mark_cancelled(self.client, flow_run.id, reason)
                skipped.add(flow_run.id)
                await self._skipped(flow_run, reason)
            except Exception as exc:  # left for the next poll
                self.logger.warning("could not skip queued run %s: %s", flow_run.id, exc)
        due = [entry for entry in due if entry.flow_run.id not in skipped]
        return self._after_submissions_of_their_queue(due)

    async def _early_for_their_limit(self, due: list[FlowRun]) -> set[Any]:
        """Prefect's worker takes scheduled runs up to its prefetch (10 s) before their time
        and proposes Pending at once. For a deployment with a concurrency limit (an overlap
        policy), a run taken early collides with the run before it, which has not ended
        only because the next one came too soon: Prefect then cancels it (skip) though the
        two would never have overlapped. Such runs are left for the poll at which they are
        due, one per deployment per poll: only a real overlap hits the limit."""
        now = datetime.now(UTC)
        candidates = [r for r in due if schedule_of(r) and r.deployment_id and not r.run_count]
        early: set[Any] = set()
        for deployment_id in dict.fromkeys(r.deployment_id for r in candidates):
            deployment = await self._deployment(deployment_id)
            if deployment.global_concurrency_limit is None:
                continue
            mine = sorted(
                (r for r in candidates if r.deployment_id == deployment_id),
                key=lambda r: scheduled_time(r) or now,
            )
            now_due = [r for r in mine if (scheduled_time(r) or now) <= now][:1]
            early |= {r.id for r in mine if r not in now_due}
        return early

    async def not_taken(self, flow_run: FlowRun) -> None:
        """A scheduled run Prefect cancelled when this worker proposed Pending (the
        deployment's limit: overlap ``skip``) is listed with Prefect's reason."""
        if not schedule_of(flow_run):
            return
        try:
            current = await self.client.read_flow_run(flow_run.id)
            if current.state is not None and current.state.type == StateType.CANCELLED:
                await self._skipped(current, current.state.message or "cancelled by Prefect before it started")
        except Exception as exc:  # listing it is a courtesy: the run is Prefect's anyway
            self.logger.warning("could not record skipped run %s: %s", flow_run.id, exc)

    async def _skipped(self, flow_run: FlowRun, reason: str) -> None:
        if self.on_skipped is not None:
            await self.on_skipped(flow_run, reason)

    def _after_submissions_of_their_queue(self, due: list[Any]) -> list[Any]:
        """Prefect counts a queue's runs in flight (its concurrency limit: an owner's runs,
        workflow_deployments.owner_queue) when the worker polls, but a run this worker took
        at the last poll counts only once it is Pending: runs of a queue with submissions
        still under way wait for the next poll, so one worker never exceeds the limit."""
        submitting = self.submitting_ids
        self._queue_of = {run_id: queue for run_id, queue in self._queue_of.items() if run_id in submitting}
        busy = set(self._queue_of.values())
        taken = [entry for entry in due if entry.flow_run.work_queue_name not in busy]
        self._queue_of.update({entry.flow_run.id: entry.flow_run.work_queue_name for entry in taken})
        return taken

    async def _beyond_the_queue(self, due: list[FlowRun]) -> list[FlowRun]:
        """Overlap ``queue`` keeps at most one scheduled run waiting (docs/triggers.md), but
        Prefect's ENQUEUE keeps every colliding run. So a scheduled run that comes due
        while a run of its deployment already waits for the slot (AwaitingConcurrencySlot)
        does not start; of several due at once with none waiting, only the first goes on.
        The deployment's collision strategy is Prefect's, read here: no policy copy."""
        candidates = sorted(
            (
                r
                for r in due
                if schedule_of(r)
                and r.deployment_id
                and not r.run_count
                and not (r.state and r.state.name == AWAITING_SLOT)
            ),
            key=lambda r: scheduled_time(r) or datetime.min.replace(tzinfo=UTC),
        )
        drop: list[FlowRun] = []
        for deployment_id in dict.fromkeys(r.deployment_id for r in candidates):
            deployment = await self._deployment(deployment_id)
            options = deployment.concurrency_options
            if (
                deployment.global_concurrency_limit is None
                or options is None
                or options.collision_strategy != ConcurrencyLimitStrategy.ENQUEUE
            ):
                continue
            mine = [r for r in candidates if r.deployment_id == deployment_id]
            waiting = await self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[AWAITING_SLOT])),
                ),
                limit=1,
            )
            drop += mine if waiting else mine[1:]
        return drop

    async def run(
        self,
        flow_run: FlowRun,
        configuration: FlowMaestroJobConfiguration,
        task_status: anyio.abc.TaskStatus[Any] | None = None,
    ) -> FlowMaestroWorkerResult:
        if self._watcher is None and (self.on_cancel is not None or self.watch_suspensions):
            self._watcher = asyncio.create_task(self._watch_cancellations())
        run_id = str(flow_run.id)
        task = start_flow_run_in_process(self.flow, flow_run, dict(flow_run.parameters))
        self.running[run_id] = task
        if self.heartbeats is not None:
            self.heartbeats.pool_id = self.heartbeats.pool_id or self.work_pool_id
            self.heartbeats.hold(run_id)
        if task_status is not None:
            # BaseWorker records this as the run's infrastructure and only then counts the
            # run as submitted; a falsy value would release its concurrency slot at once.
            task_status.started(self.identifier)
        try:
            state = await task
            status_code = 0
            if state is not None and state.type == StateType.CANCELLING:
                # Cancelled while the worker was starting it: the engine saw Cancelling and
                # gave up before the flow ran; nothing else would ever end it.
                await mark_cancelled(self.client, flow_run.id, "cancelled before it started")
        except Pause:  # released while an approval or a delay waits (suspended): continued later
            status_code = 0
        except asyncio.CancelledError:
            status_code = 0 if task.cancelled() else 1
            if not task.done():
                raise
        except Exception:  # the engine records the state itself; count it as a failed run
            self.logger.exception("flow run %s raised out of the engine", run_id)
            status_code = 1
        finally:
            self.running.pop(run_id, None)
            if self.heartbeats is not None:
                self.heartbeats.release(run_id)
        return FlowMaestroWorkerResult(identifier=self.identifier, status_code=status_code)

    async def _watch_cancellations(self) -> None:
        """One read of all this worker's runs per poll, whatever their number: cancelled runs
        are stopped, runs wrongly marked crashed while they execute here are set back."""
        while True:
            await asyncio.sleep(self.cancel_poll_s)
            ids = list(self.running)
            if not ids:
                continue
            try:
                flow_runs = await self.client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
                )
            except Exception as exc:  # a hiccup of the API must not end the watcher
                self.logger.debug("could not read run states: %s", exc)
                continue
            for flow_run in flow_runs:
                if flow_run.state and flow_run.state.type in (StateType.CANCELLING, StateType.CANCELLED):
                    if self.on_cancel is not None:
                        self.on_cancel(str(flow_run.id))
                elif self.watch_suspensions and mark_suspended(flow_run):
                    self.logger.info("flow run %s is suspended: its engine lets go of it", flow_run.id)
                elif self.on_pause is not None and is_pause_requested(flow_run):
                    self.on_pause(str(flow_run.id))
                elif self.heartbeats is not None and written_by_recovery(flow_run.state):
                    await self._set_back(flow_run)

    async def _set_back(self, flow_run: FlowRun) -> None:
        """A run this worker still executes that recovery marked Crashed (its beats were late)
        or scheduled again: Prefect's worker would skip it as a duplicate submission and it
        would show pending until this execution ends. Its state is made true again."""
        task = self.running.get(str(flow_run.id))
        if task is None or task.done():
            return
        try:
            history = await self.client.read_flow_run_states(flow_run.id)
            current = (await self.client.read_flow_run(flow_run.id)).state
            earlier = state_to_restore(current, history)
            if earlier is None or current is None or task.done():
                return
            await restore_state(
                self.client,
                flow_run.id,
                earlier,
                f"set back to {earlier.name}: it was marked "
                f"{current.name} while its worker {self.identifier} still executes it",
            )
            self.logger.warning(
                "flow run %s was marked %s while this worker executes it: set back to %s",
                flow_run.id,
                current.name,
                earlier.name,
            )
        except Exception as exc:  # the next poll tries again
            self.logger.warning("could not set back flow run %s: %s", flow_run.id, exc)

    async def shutdown(self, grace_s: float) -> None:
        """Take no new runs; wait up to ``grace_s`` for runs in flight, then hand the rest back."""
        self.draining = True
        tasks = list(self.running.values())
        if tasks:
            self.logger.info("waiting up to %.0f s for %d run(s) in flight", grace_s, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            stop = self.on_hand_back or self.on_cancel
            if pending and stop is not None:
                # Each flow stops its execution and puts its run back in the queue (or, with
                # no hand-back, ends it Cancelled), instead of being torn down (Crashed).
                self.logger.warning(
                    "grace period over: handing %d run(s) back to the work pool for another worker", len(pending)
                )
                for run_id, task in list(self.running.items()):
                    if task in pending:
                        stop(run_id)
                _done, pending = await asyncio.wait(pending, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._watcher is not None:
            self._watcher.cancel()

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: FlowMaestroJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Called by Prefect for a run cancelled before it started; it never ran here."""
        return None


async def run_worker(
    flow: Flow[..., Any],
    *,
    pool: str = DEFAULT_POOL,
    limit: int = 20,
    poll_s: float = 1.0,
    cancel_poll_s: float = 1.0,
    grace_s: float = 30.0,
    name: str | None = None,
    on_cancel: Callable[[str], None] | None = None,
    started: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    crash_detect_s: float | None = None,
    signals: CancelSignals | None = None,
    catch_up: str = "latest",
    late_after_s: float = 60.0,
    on_hand_back: Callable[[str], None] | None = None,
    on_skipped: Callable[[FlowRun, str], Awaitable[None]] | None = None,
    metrics: RunMetrics | None = None,
    events: bool = False,
) -> None:
    """Run one worker until ``stop`` is set (by default: SIGTERM or SIGINT), then drain it
    (see ``FlowMaestroWorker.shutdown``). With ``crash_detect_s``, it makes sure the
    recovery automations exist and beats for its runs: with the heartbeats of ``signals``
    when they are ``BeatingSignals`` (its child runs too), its own otherwise. With
    ``events``, it polls as soon as Prefect's event stream says a run of its pool was
    scheduled (``deployments.run_wakeups``), besides every ``poll_s``."""
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    leave_sigterm_to_the_worker()
    watch_suspensions = leave_suspensions_to_the_worker()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    # Prefect's default poll is every 10 s; runs started through the API should start
    # within about a second. The poll is one cheap query per worker. It keeps its interval
    # when the event stream wakes it: the runs a poll leaves for the next one (a queue's
    # submissions under way, runs early for their limit) have no event to wake it again.
    with temporary_settings({PREFECT_WORKER_QUERY_SECONDS: poll_s}):
        flow = await with_default_result_storage(flow)  # once, not once per run
        heartbeats, sweeper = None, None
        if crash_detect_s is not None:
            async with get_client() as client:
                await ensure_recovery_automations(client, pool, crash_detect_s)
            heartbeats = (
                signals.heartbeats
                if isinstance(signals, BeatingSignals)
                else HeartbeatEmitter(
                    pool=pool,
                    interval_s=heartbeat_interval(crash_detect_s),
                    stall_limit_s=loop_stall_limit(crash_detect_s),
                )
            )
        worker = FlowMaestroWorker(
            flow=flow,
            work_pool_name=pool,
            limit=limit,
            cancel_poll_s=cancel_poll_s,
            name=name,
            on_cancel=on_cancel,
            heartbeats=heartbeats,
            catch_up=catch_up,
            late_after_s=late_after_s,
            on_hand_back=on_hand_back,
            on_skipped=on_skipped,
            on_pause=signals.pause if signals is not None else None,
            watch_suspensions=watch_suspensions,
        )
        if metrics is not None:
            track_slots(metrics, lambda: worker.running, limit)
        if crash_detect_s is not None:
            sweeper = CrashSweeper(
                pool=pool, grace_s=crash_detect_s, interval_s=heartbeat_interval(crash_detect_s), held=worker.held
            )
        wakeups = (
            RunWakeups(
                worker.poll_for,
                lambda: worker.work_pool_id if worker.synced else None,
                name=worker.name,
                read_peers=worker.online_peers,
            )
            if events and worker_events_supported()
            else None
        )
        beating = asyncio.create_task(heartbeats.run()) if heartbeats is not None else None
        sweeping = asyncio.create_task(sweeper.run()) if sweeper is not None else None
        waking = asyncio.create_task(wakeups.run()) if wakeups is not None else None
        main = asyncio.create_task(worker.start(printer=started or (lambda _line: None)))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({main, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not main.done():
            await worker.shutdown(grace_s)
            main.cancel()
        await asyncio.gather(main, return_exceptions=True)
        stopping.cancel()
        for background in (beating, sweeping, waking):
            if background is not None:
                background.cancel()


class BeatingSignals(CancelSignals):
    """The cancellation signals of a worker that sends heartbeats, with those heartbeats: the
    runs it watches are the children they beat for (a sub-workflow's child run gets its first
    beat the moment it is watched), and a run letting go of the worker (suspended) stops its
    beats first, until it keeps the worker after all."""

    def __init__(self, *, pool: str, crash_detect_s: float):
        super().__init__(on_watch=self._first_child_beat, on_holding=self._hold_or_release)
        self.heartbeats = HeartbeatEmitter(
            pool=pool,
            interval_s=heartbeat_interval(crash_detect_s),
            stall_limit_s=loop_stall_limit(crash_detect_s),
            children=self.watched,
        )

    def _first_child_beat(self, run_id: str) -> None:
        if run_id not in self.heartbeats.held():  # the worker's own runs beat from when it took them
            self.heartbeats.beat_for([run_id], child=True)

    def _hold_or_release(self, run_id: str, held: bool) -> None:
        if held:
            self.heartbeats.hold(run_id)
        else:
            self.heartbeats.release(run_id)


@asynccontextmanager
async def worker_context(
    database_url: str, *, beating_pool: str | None = None, metrics: RunMetrics | None = None
) -> AsyncIterator[RunContext]:
    """The run context every run of one worker process shares: warm pools, one store, one
    cancellation watcher (with the heartbeats of a worker that beats for its runs of
    ``beating_pool``: crash detection), the plans of saved versions, the traces of its runs
    (``OTEL_*``) and their ``metrics`` when it serves them."""
    base = RunContext.from_environment()
    store = SqlRunStore.from_url(
        database_url, node_execution_retention_days=base.settings.node_execution_retention_days
    )
    # Nodes naming a stored credential read it here, with the ring derived from the API's.
    settings = base.settings
    box = SecretBox.for_credentials(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.home,
        settings.credentials_key.get_secret_value() if settings.credentials_key else None,
    )
    credentials = Credentials(sessions(store.engine), box)
    handler_settings = base.services.settings if base.services is not None else None
    signals = (
        CancelSignals()
        if beating_pool is None
        else BeatingSignals(pool=beating_pool, crash_detect_s=base.settings.crash_detect_s)
    )
    context = replace(
        base,
        services=HandlerServices(handler_settings, credentials=credentials, database_url=database_url),
        store=store,
        resolve_workflow=store.resolve_subworkflow,
        cancellations=signals,
        plans=PlanCache(base.settings.plan_cache_nodes),
        observability=Observability(base.observability.tracing if base.observability else None, metrics),
    )
    try:
        yield context
    finally:
        await context.close()
        await store.close()


async def record_skipped(store: SqlRunStore, flow_run: FlowRun, reason: str) -> None:
    """List a scheduled run that ended without executing among the owner's runs, with why."""
    parameters = flow_run.parameters or {}
    owner, workflow_id = parameters.get("owner"), parameters.get("workflow_id")
    if not isinstance(owner, str) or not isinstance(workflow_id, str):
        return
    schedule_id = schedule_id_of(flow_run)
    await store.skipped(
        str(parameters.get("execution_id") or flow_run.id),  # a run the API accepted has an id of its own
        owner=owner,
        workflow_id=workflow_id,
        inputs=dict(parameters.get("inputs") or {}),
        trigger={"type": "schedule", "schedule_id": schedule_id} if schedule_id else {"type": "schedule"},
        reason=reason,
        flow_run_id=str(flow_run.id),
    )


async def serve_worker(
    settings: WorkerSettings, *, name: str | None = None, started: Callable[[str], None] | None = None
) -> None:
    """``flowmaestro worker``: one worker process with its context, until SIGTERM/SIGINT;
    with a metrics port, its ``/metrics`` (``deployments/worker_metrics.py``)."""
    from store.db import upgrade_schema

    url = settings.sqlalchemy_url()
    await upgrade_schema(url)  # a no-op when the API (or another worker) already did it
    metrics = RunMetrics() if settings.worker_metrics_port is not None else None
    server = (
        MetricsServer(metrics, settings.worker_metrics_host, settings.worker_metrics_port)
        if metrics is not None and settings.worker_metrics_port is not None
        else None
    )
    try:
        await _serve_worker(settings, url, metrics, name, started)
    finally:
        if server is not None:
            server.close()


async def _serve_worker(
    settings: WorkerSettings,
    url: str,
    metrics: RunMetrics | None,
    name: str | None,
    started: Callable[[str], None] | None,
) -> None:
    from flows.flow import workflow_flow

    async with worker_context(url, beating_pool=settings.work_pool, metrics=metrics) as context:
        assert context.cancellations is not None and isinstance(context.store, SqlRunStore)
        if context.services is not None and context.services.settings.code_sandbox == "off":
            logging.getLogger(__name__).warning(
                "FLOWMAESTRO_CODE_SANDBOX=off: code nodes run unsandboxed, with this worker's user, files "
                "and network. UNSAFE unless every canvas this worker runs is trusted (docs/code.md)"
            )
        await run_worker(
            workflow_flow(context),
            pool=settings.work_pool,
            limit=settings.worker_limit,
            poll_s=settings.worker_poll_s,
            cancel_poll_s=context.settings.cancel_poll_s,
            grace_s=settings.worker_grace_s,
            # The settings its runs see, in its Prefect worker name: serve warns when the
            # workers of a pool differ (deployments/settings_fingerprint.py).
            name=tagged_name(name or f"FlowMaestroWorker {uuid.uuid4()}", settings_fingerprint(os.environ)),
            on_cancel=context.cancellations.cancel,
            on_hand_back=context.cancellations.hand_back,
            on_skipped=functools.partial(record_skipped, context.store),
            started=started,
            crash_detect_s=context.settings.crash_detect_s,
            signals=context.cancellations,
            catch_up=settings.schedule_catch_up,
            late_after_s=settings.schedule_late_after_s,
            metrics=metrics,
            events=settings.worker_events,
        )
