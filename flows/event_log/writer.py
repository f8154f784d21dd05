"""Writing a run's events to an event log: ``EventLogWriter``, one per run's bus."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from flows.event_log.base import EventLog
from flows.events import FINAL_EVENT_TYPES, EventBus, RunEvent

log = logging.getLogger(__name__)


class EventLogWriter:
    """Subscribes to one run's EventBus and appends its events to an EventLog in batches, off the engine's hot path.

    The subscriber only queues the event and wakes a background task, which appends batches of
    up to ``max_batch`` events, waiting at most ``max_delay_s`` for a batch to fill (not at all
    once the run's final event is queued). Batches are appended one after the other, in seq
    order. A failing append is retried ``retries`` times with exponential backoff (appends are
    idempotent), then the batch is logged as lost. The task ends once the final event is stored
    (and starts again should anything follow); ``close()`` flushes whatever is still queued.
    """

    def __init__(
        self,
        log: EventLog,
        *,
        max_batch: int = 200,
        max_delay_s: float = 0.05,
        retries: int = 30,
        backoff_s: float = 0.2,
        hold_final: bool = False,
    ):
        """``retries``: 30 at most 5 s apart ride out an event store down for about two minutes
        (a restart, a failover); 5 gave up after 6 s and lost the events. ``hold_final``: keep
        the run's final event back until ``release_final()`` (or ``close()``), so that whoever
        sees it in the log can read what the run stored after it ended (its result)."""
        self.log = log
        self.hold_final = hold_final
        self._held: RunEvent | None = None
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.stored = 0
        self.lost = 0
        self._queue: deque[RunEvent] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._final_queued = False
        self._closing = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def finished(self) -> bool:
        """The final event is stored and nothing is queued."""
        return self._final_queued and not self._queue and (self._task is None or self._task.done())

    def attach(self, bus: EventBus) -> None:
        try:
            self._bind(asyncio.get_running_loop())
        except RuntimeError:
            pass  # bound at the first event
        bus.subscribe(self._on_event)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._wake = asyncio.Event()

    def _on_event(self, event: RunEvent) -> None:
        """The bus subscriber: O(1), never blocks, never awaits, never raises."""
        if self.hold_final and event.type in FINAL_EVENT_TYPES:
            self._held = event
            return
        self._queue.append(event)
        if event.type in FINAL_EVENT_TYPES:
            self._final_queued = True
        if self._loop is None:
            try:
                self._bind(asyncio.get_running_loop())
            except RuntimeError:
                return  # no event loop yet: stored by the next event published in one, or close()
        # Every publisher runs in the run's event loop (handlers are coroutines, task runs are
        # awaited in the flow's loop), so the task is kicked directly.
        self._kick()

    def _flush_now(self) -> bool:
        return len(self._queue) >= self.max_batch or self._closing or self._final_queued

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
                log.error("event log writer failed", exc_info=self._task.exception())
            self._task = asyncio.ensure_future(self._run())
        assert self._wake is not None
        # Wake the task when it waits for a first event, or when a batch is due; not for
        # every event while a batch builds up.
        if not self._wake.is_set() and (len(self._queue) <= 1 or self._flush_now()):
            self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if not self._queue:
                if self._closing or self._final_queued:
                    return
                wake.clear()
                await wake.wait()
                continue
            if not self._flush_now():
                # Let a batch build up: until it is full, the run ends, or max_delay_s.
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), self.max_delay_s)
                except TimeoutError:
                    pass
            count = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            await self._store(batch)

    async def _store(self, batch: list[RunEvent]) -> None:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                await self.log.append(batch)
                self.stored += len(batch)
                return
            except Exception as exc:
                if attempt == self.retries:
                    self.lost += len(batch)
                    log.error(
                        "event log: lost %d events of run %s (seq %d..%d) after %d attempts: %s: %s",
                        len(batch),
                        batch[0].execution_id,
                        batch[0].seq,
                        batch[-1].seq,
                        attempt + 1,
                        type(exc).__name__,
                        exc,
                    )
                    return
                log.warning(
                    "event log: appending %d events failed (%s: %s); retrying in %.2fs",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def release_final(self) -> None:
        """Queue the final event held back (``hold_final``)."""
        held, self._held, self.hold_final = self._held, None, False
        if held is not None:
            self._on_event(held)

    def drop_final(self) -> None:
        """Forget the final event held back (``hold_final``): the run did not end after all
        (its worker handed it back), and its next execution goes on numbering after the
        events stored."""
        self._held, self.hold_final = None, False

    async def close(self) -> None:
        """Store everything still queued (call when the run ends). Returns once it is stored,
        or given up on after the retries."""
        self.release_final()
        self._closing = True
        if self._loop is None:
            if self._queue:
                self._bind(asyncio.get_running_loop())
            else:
                return
        while self._queue or (self._task is not None and not self._task.done()):
            if self._task is None or self._task.done():
                self._kick()
            elif self._wake is not None:
                self._wake.set()
            assert self._task is not None
            await asyncio.shield(self._task)
