"""A worker learns of new runs of its pool from Prefect's event stream and polls at once.

Prefect's worker finds runs by polling its pool every ``worker_poll_s``: a run started
through the API waited for the next poll (measured: 656 ms of a 1.06 s execute -> first
node, ``benchmarks/api.py``). Prefect's server also tells, over one websocket per worker,
when a flow run of the pool goes ``Scheduled`` (``prefect_compat.scheduled_runs_of_pool``):
the worker then polls at once. Nothing depends on an event arriving: the poll goes on at its
interval and finds every run, so a lost event, a dropped websocket or an untested Prefect
only costs the wait for the next poll. A dropped websocket is connected again, with a
backoff while it keeps failing.

Off unless ``FLOWMAESTRO_WORKER_EVENTS=true``: in a burst of runs the subscriptions cost
the Prefect server more than the faster starts are worth (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any

from flows import prefect_compat

log = logging.getLogger("flowmaestro.worker.wakeups")

EventSource = Callable[[str, Callable[[], None]], AsyncGenerator[str, None]]
"""The ids of runs of a pool (by id) going Scheduled; calls its second argument once connected."""


class RunWakeups:
    """Polls a worker's pool when Prefect says a run of it was scheduled: ``poll(answers)``
    takes only the due runs ``answers`` names (the regular poll takes any).

    Every worker of the pool hears the same event. Were all of them to poll, all would
    propose Pending for the run and all but one be refused: a deployment read and a state
    proposal each, for nothing (measured: +0.75 requests per run with two workers). So one
    worker answers each run: of the pool's online workers (``read_peers``, read again every
    ``peers_every_s``), sorted by name, the one the run's id falls to. The others leave it
    to their regular poll, as they would without events; and a poll an event started takes
    only the runs this worker answers, so that in a burst two workers' wake-ups do not take
    the same runs. A worker that is not among the online workers read last, or when that
    list cannot be read, answers every run.

    Each wake-up waits a moment drawn from ``delay_s`` first: Prefect's server sends the
    event from inside the transaction that schedules the run, so a poll sent the same
    instant could miss it; and a burst of events makes one poll. There is no second try: a
    run the poll missed is found by the regular poll."""

    def __init__(
        self,
        poll: Callable[[Callable[[str], bool]], Awaitable[Sequence[Any]]],
        pool_id: Callable[[], str | None],
        *,
        name: str = "",
        read_peers: Callable[[], Awaitable[Sequence[str]]] | None = None,
        peers_every_s: float = 30.0,
        events: EventSource = prefect_compat.scheduled_runs_of_pool,
        delay_s: tuple[float, float] = (0.02, 0.08),
        reconnect_max_s: float = 30.0,
    ) -> None:
        self._poll = poll
        self._pool_id = pool_id
        self._name = name
        self._read_peers = read_peers
        self._peers_every_s = peers_every_s
        self._peers: tuple[str, ...] = ()
        self._events = events
        self._delay_s = delay_s
        self._reconnect_max_s = reconnect_max_s
        self._wake = asyncio.Event()
        self.connected = False
        """Whether the event stream is connected now."""
        self.connections = 0
        self.wakeups = 0
        """Polls an event started."""

    async def run(self) -> None:
        """Listen and poll until cancelled."""
        helpers = [asyncio.create_task(self._poll_when_woken())]
        if self._read_peers is not None:
            helpers.append(asyncio.create_task(self._follow_peers()))
        try:
            await self._listen()
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def answers(self, run_id: str) -> bool:
        """Whether this worker is the one of the pool that polls for ``run_id`` at once."""
        peers = self._peers
        if self._name not in peers:
            return True
        try:
            number = uuid.UUID(run_id).int
        except ValueError:
            return True
        return peers[number % len(peers)] == self._name

    def woken(self, run_id: str) -> None:
        if self.answers(run_id):
            log.debug("run %s scheduled: polling", run_id)
            self._wake.set()

    async def _follow_peers(self) -> None:
        assert self._read_peers is not None
        while True:
            if self._pool_id() is not None:
                try:
                    self._peers = tuple(sorted(set(await self._read_peers())))
                except Exception as exc:  # answer every run meanwhile
                    log.debug("could not read the pool's workers: %s", exc)
                    self._peers = ()
            await asyncio.sleep(self._peers_every_s if self._peers else 1.0)

    def _connected(self) -> None:
        self.connected = True
        self.connections += 1

    async def _listen(self) -> None:
        first = min(1.0, self._reconnect_max_s)
        backoff = first
        while True:
            pool_id = self._pool_id()
            if pool_id is None:  # the worker has not synced with its pool yet
                await asyncio.sleep(0.1)
                continue
            before = self.connections
            try:
                async with aclosing(self._events(pool_id, self._connected)) as run_ids:
                    async for run_id in run_ids:
                        self.woken(run_id)
                problem = "closed by the server"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poll goes on meanwhile: a warning, not an error
                problem = f"{type(exc).__name__}: {exc}"
            self.connected = False
            if self.connections > before:
                backoff = first  # it was up: try again soon
            log.warning(
                "Prefect's event stream (new runs of the pool) is not connected (%s): runs wait for the "
                "poll meanwhile; connecting again in %.0f s",
                problem,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_max_s)

    async def _poll_when_woken(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(random.uniform(*self._delay_s))
            self._wake.clear()  # events meanwhile: this poll finds their runs too
            self.wakeups += 1
            try:
                await self._poll(self.answers)
            except Exception as exc:  # the regular poll tries again
                log.debug("a poll on a new run failed: %s", exc)
