"""Which of the runs open streams follow have ended in Prefect: one ``RunEndWatcher`` per API
process, asking Prefect about all of them in one request per interval.

A run's stream ends with the run's final event. A run can end without one (its worker died
and it ran out of crash retries, it was cancelled in the Prefect UI before it started): its
stream then ends with the status Prefect has for it (a ``reconciled`` final event). Each stream
used to ask Prefect itself every 5 s of quiet, so a hundred streams of queued runs were twenty
Prefect reads a second. Now each stream registers its run (``watch``, until ``forget``) and
awaits its ``RunEnd``; the watcher reads the states of every registered run in one ``read_flow_runs``
(``BATCH`` ids a request) every ``interval_s``, and only while some stream is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun

from api.prefect_gateway import PrefectGateway
from api.runs import STATUS_OF_STATE
from store.errors import Unavailable
from store.queries import FINAL_STATUSES, Executions

log = logging.getLogger("flowmaestro.api.streams")

BATCH = 200
"""Run ids per request: Prefect answers at most 200 runs a read (``PREFECT_API_DEFAULT_LIMIT``)."""
T = TypeVar("T")


@dataclass(eq=False)
class RunEnd:
    """What one stream knows of its run's end: ``ended`` is set, with ``status``, once Prefect
    has it in a final state as read by a request sent after ``armed_at``."""

    run_id: str
    armed_at: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    status: str | None = None


class RunEndWatcher:
    def __init__(self, prefect: PrefectGateway, executions: Executions, interval_s: float = 5.0):
        """``executions``: the store's runs, which name each run's flow run (a run the API
        accepted has an execution id of its own, and no flow run until its drainer made it)."""
        self.prefect = prefect
        self.executions = executions
        self.interval_s = interval_s
        self._watching: dict[str, set[RunEnd]] = {}
        self._someone_waits = asyncio.Event()
        self._requests = 0
        """Requests sent so far: a ``RunEnd`` counts only the answers of later ones."""

    @property
    def watching(self) -> int:
        """How many runs have streams waiting on their end."""
        return len(self._watching)

    def watch(self, run_id: str) -> RunEnd:
        """Register a stream of ``run_id`` until ``forget``."""
        end = RunEnd(run_id, self._requests)
        try:
            uuid.UUID(run_id)
        except ValueError:
            return end  # not a Prefect run id: Prefect can say nothing of it
        self._watching.setdefault(run_id, set()).add(end)
        self._someone_waits.set()
        return end

    def forget(self, end: RunEnd) -> None:
        """The stream has ended (once or more often)."""
        ends = self._watching.get(end.run_id)
        if ends is not None:
            ends.discard(end)
            if not ends:
                del self._watching[end.run_id]
        if not self._watching:
            self._someone_waits.clear()

    def rearm(self, end: RunEnd) -> None:
        """Forget the end seen so far (the run was retried after it): only a request sent from
        now on can end it again."""
        end.ended.clear()
        end.status = None
        end.armed_at = self._requests

    async def run(self) -> None:
        """Check every ``interval_s`` while any stream waits; never returns (cancel it)."""
        while True:
            await self._someone_waits.wait()
            await asyncio.sleep(self.interval_s)
            try:
                await self.check()
            except Unavailable as exc:
                # Streams keep following their event log; the next interval asks again.
                log.warning("could not read the states of streamed runs: %s", exc.message)
            except Exception:
                log.exception("could not read the states of streamed runs")

    async def check(self) -> None:
        """Read the state of every registered run; signal the ends of those that have ended."""
        self._requests += 1
        sent = self._requests
        stored = await self.executions.flow_runs_of(list(self._watching))
        execution_of: dict[str, str] = {}  # flow run id -> execution id
        for run_id in list(self._watching):
            flow_run_id, status = stored.get(run_id, (run_id, ""))
            if flow_run_id is None:  # accepted, its flow run not created: ended only if cancelled
                if status in FINAL_STATUSES:
                    self._end(run_id, status, sent)
                continue
            execution_of[flow_run_id] = run_id
        flow_run_ids = list(execution_of)
        for start in range(0, len(flow_run_ids), BATCH):
            chunk = [uuid.UUID(flow_run_id) for flow_run_id in flow_run_ids[start : start + BATCH]]
            flow_runs = await self.prefect.call("read the states of streamed runs", partial(_read_runs, ids=chunk))
            for flow_run in flow_runs:
                ended = STATUS_OF_STATE.get(flow_run.state.type) if flow_run.state else None
                if ended in FINAL_STATUSES:
                    self._end(execution_of[str(flow_run.id)], ended, sent)

    def _end(self, run_id: str, status: str, sent: int) -> None:
        for end in self._watching.get(run_id, ()):
            if end.armed_at < sent and not end.ended.is_set():
                end.status = status
                end.ended.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RunEndWatcher]:
        """The watcher's loop as a task of the block (the API's lifespan)."""
        task = asyncio.create_task(self.run(), name="run end watcher")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _read_runs(client: PrefectClient, ids: list[uuid.UUID]) -> list[FlowRun]:
    return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))


async def until_ended(events: AsyncGenerator[T, None], end: RunEnd) -> AsyncIterator[T]:
    """``events`` until they end or ``end.ended`` is set, whichever comes first (a follower
    waiting for the next event is cancelled; ``events`` is closed either way)."""
    ended = asyncio.ensure_future(end.ended.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait((step, ended), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield item
    finally:
        ended.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step  # however it ended, the stream ends here
        await events.aclose()
