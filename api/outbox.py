"""Creates the Prefect flow runs of the runs the API accepted (``store.outbox``).

An execute records its run in the store and answers at once; this task, one per API
process, then creates the run's flow run, retrying with backoff until Prefect has it.
Prefect stays the scheduler and the queue: this only stands in front of ``create_flow_run``
so that an API answer never waits on Prefect, and a run accepted is never lost (an API that
dies leaves its rows, which any API process picks up at its start and every ``scan_s``).

Bounded twice: by ``accept_max_waiting`` (``RunService.start`` refuses beyond it) and by
``concurrency`` flow runs created at once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable

from store.errors import Conflict, Invalid, NotFound, Unavailable
from store.outbox import RunOutbox, Unsent

log = logging.getLogger("flowmaestro.api.outbox")

MAX_BACKOFF_S = 30.0
GIVE_UP_ATTEMPTS = 20
"""A run whose flow run could not be created this many times for a reason other than
Prefect being down (a workflow gone, a bug) ends failed, saying why."""

CreateFlowRun = Callable[[Unsent], Awaitable[None]]
FailRun = Callable[[Unsent, str], Awaitable[None]]


def backoff_s(attempts: int) -> float:
    """0.5 s, 1 s, 2 s ... up to ``MAX_BACKOFF_S``, with jitter so that the rows an outage
    left do not all come due in the same instant."""
    base: float = min(MAX_BACKOFF_S, 0.5 * 2.0 ** max(attempts - 1, 0))
    return base * random.uniform(0.8, 1.2)


class Drainer:
    """Drains the outbox of one API process."""

    def __init__(
        self,
        outbox: RunOutbox,
        create: CreateFlowRun,
        fail: FailRun,
        *,
        concurrency: int,
        scan_s: float,
        lease_s: float,
        wake: asyncio.Event | None = None,
    ):
        """``create``: creates the run's flow run and records it (``RunService.create_flow_run``);
        ``fail``: ends a run that cannot be created. ``lease_s``: how long a claimed row is
        this process's (longer than one create may take). ``wake``: set when a run was
        accepted (its setter is handed to whoever accepts runs)."""
        self.outbox, self.create, self.fail = outbox, create, fail
        self.concurrency, self.scan_s, self.lease_s = concurrency, scan_s, lease_s
        self._wake = wake if wake is not None else asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def run(self) -> None:
        while not self._stopping:
            # Cleared before the claim, not after: a run accepted while the claim reads the
            # store (too late for its query) sets it again, and is claimed next, not at the
            # next scan.
            self._wake.clear()
            free = self.concurrency - len(self._in_flight)
            claimed: list[Unsent] = []
            if free > 0:
                try:
                    claimed = await self.outbox.claim(free, self.lease_s)
                except Unavailable as exc:  # the store is down: the next scan tries again
                    log.warning("accepted runs: %s", exc.message)
                except Exception:
                    log.exception("accepted runs: could not claim rows")
            for unsent in claimed if not self._stopping else ():  # a claim left lapses: another takes it
                task = asyncio.create_task(self._create(unsent), name=f"create flow run {unsent.execution_id}")
                self._in_flight.add(task)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # there may be more due: go on as slots free up
            # Not wait_for: on Python 3.11 it loses a cancellation that comes as the event is
            # set (a create ending as the app stops), and the drainer would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scan_s):
                    await self._wake.wait()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()

    async def _create(self, unsent: Unsent) -> None:
        try:
            await self.create(unsent)
            return
        except Unavailable as exc:  # Prefect (or the store) is down: later
            reason = exc.message
        except (NotFound, Invalid, Conflict) as exc:
            reason = exc.message
            if unsent.attempts >= GIVE_UP_ATTEMPTS:
                await self._fail(unsent, reason)
                return
        except Exception as exc:  # a bug must not end the drainer; the row is tried again
            log.exception("run %s: could not create its flow run", unsent.execution_id)
            reason = type(exc).__name__
        delay = backoff_s(unsent.attempts)
        log.info("run %s: flow run not created (%s); again in %.1f s", unsent.execution_id, reason, delay)
        with contextlib.suppress(Exception):  # else its lease expires and it is tried then
            await self.outbox.retry_later(unsent.execution_id, delay)

    async def _fail(self, unsent: Unsent, reason: str) -> None:
        log.error("run %s: gave up creating its flow run: %s", unsent.execution_id, reason)
        with contextlib.suppress(Exception):
            await self.fail(unsent, reason)

    async def stop(self) -> None:
        """Stop; a create cut short leaves its row, which the next drainer takes (the flow
        run's idempotency key makes a second create answer the first's flow run)."""
        self._stopping = True
        self._wake.set()
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)


@contextlib.asynccontextmanager
async def running(drainer: Drainer) -> AsyncIterator[Drainer]:
    """``drainer`` running in the background while the app serves."""
    task = asyncio.create_task(drainer.run(), name="accepted runs")
    try:
        yield drainer
    finally:
        await drainer.stop()  # the loop ends at its next turn, and is cancelled meanwhile
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
