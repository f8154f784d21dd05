"""The SQL event log's followers on PostgreSQL wake on LISTEN/NOTIFY (flows/event_log/pg_listener.py).

Every follower here re-reads on its own only after ``safety_poll_s`` = 10 minutes: an event it
gets within the test's timeout came by notification (or by the listener's wake-up after a
reconnection), never by polling. Waits are on what happened; timeouts only turn a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import pytest

from flows.event_log import SqlEventLog, StoredEvent
from flows.event_log.pg_listener import APPLICATION_NAME
from tests.test_event_log import PG_ADMIN_DSN, event, pg_url  # noqa: F401 (pg_url: the fixture)

pytestmark = pytest.mark.services
NEVER_S = 600.0
"""The safety poll of these tests: longer than any of them."""
PROMPT_S = 20.0
"""How long an event may take to arrive by notification, on a loaded machine."""


@pytest.fixture
async def logs(pg_url):
    """A writer log and a follower log (two processes' logs), never polling on their own."""
    writer = SqlEventLog(pg_url, safety_poll_s=NEVER_S, poll_interval=NEVER_S)
    reader = SqlEventLog(pg_url, safety_poll_s=NEVER_S, poll_interval=NEVER_S)
    yield writer, reader
    await reader.close()
    await writer.close()


class Follower:
    """A follower of one run in a task of its own; ``received`` fills as events arrive."""

    def __init__(self, log: SqlEventLog, execution_id: str):
        self.received: list[StoredEvent] = []
        self._arrived = asyncio.Condition()
        self.task = asyncio.create_task(self._follow(log, execution_id))

    async def _follow(self, log: SqlEventLog, execution_id: str) -> None:
        async with contextlib.aclosing(log.follow(execution_id)) as events:
            async for stored in events:
                async with self._arrived:
                    self.received.append(stored)
                    self._arrived.notify_all()

    async def wait_for(self, seq: int, within: float = PROMPT_S) -> None:
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: any(e.seq == seq for e in self.received) or self.task.done())
        if self.task.done():
            self.task.result()  # its error, if it failed
        assert [e.seq for e in self.received][-1] == seq

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def listeners(database: str) -> list[int]:
    """The pids of the listening connections on ``database``."""
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = $2", APPLICATION_NAME, database
        )
    finally:
        await admin.close()
    return [row["pid"] for row in rows]


async def terminate(pids: list[int]) -> None:
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        for pid in pids:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def wait_until(condition, what: str, within: float = 60.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():
            await asyncio.sleep(0.05)


async def test_a_waiting_follower_gets_an_appended_event_by_notification(logs):
    writer, reader = logs
    run = str(uuid.uuid4())
    await writer.append([event(run, 1)])
    follower = Follower(reader, run)
    try:
        await follower.wait_for(1)  # read at once; the follower now waits (its poll: 10 minutes)
        await writer.append([event(run, 2)])
        await follower.wait_for(2)
        await writer.append([event(run, 3, "execution:completed")])
        await follower.wait_for(3)
        await asyncio.wait_for(follower.task, PROMPT_S)  # the final event ends it
    finally:
        await follower.stop()


async def test_followers_of_several_runs_share_one_listening_connection(logs, pg_url):
    writer, reader = logs
    runs = [str(uuid.uuid4()) for _ in range(5)]
    followers = [Follower(reader, run) for run in runs] + [Follower(reader, runs[0]) for _ in range(2)]
    try:
        for run in runs:
            await writer.append([event(run, 1)])
        for follower in followers:
            await follower.wait_for(1)
        # One append wakes the followers of its run only: the others keep waiting.
        await writer.append([event(runs[0], 2)])
        for follower in followers[:1] + followers[5:]:
            await follower.wait_for(2)
        assert all(len(f.received) == 1 for f in followers[1:5])
        await writer.append([event(run, 2) for run in runs[1:]])  # one batch, four runs
        for follower in followers[1:5]:
            await follower.wait_for(2)
        assert len(await listeners(pg_url.rsplit("/", 1)[1])) == 1
        assert reader.listener is not None and reader.listener.connections == 1
        assert writer.listener is not None and writer.listener.connections == 0  # it never followed
    finally:
        for follower in followers:
            await follower.stop()


async def test_a_follower_survives_its_listening_connection_being_killed(logs, pg_url):
    writer, reader = logs
    database = pg_url.rsplit("/", 1)[1]
    run = str(uuid.uuid4())
    await writer.append([event(run, 1)])
    follower = Follower(reader, run)
    try:
        await follower.wait_for(1)
        listener = reader.listener
        assert listener is not None and listener.connections == 1
        killed = await listeners(database)
        assert len(killed) == 1
        await terminate(killed)
        # Appended while nobody may be listening: the reconnection wakes the follower to re-read.
        await writer.append([event(run, 2)])
        await follower.wait_for(2)

        async def reconnected() -> bool:
            now = await listeners(database)
            return len(now) == 1 and now != killed and listener.connected

        await wait_until(reconnected, "a new listening connection")
        assert listener.connections == 2
        # And later events come by notification on the new connection.
        await writer.append([event(run, 3)])
        await follower.wait_for(3)
    finally:
        await follower.stop()


async def test_an_idle_follower_still_times_out(pg_url):
    """The idle clock still ends a follower of a quiet run, notifications or not."""
    reader = SqlEventLog(pg_url, safety_poll_s=NEVER_S)
    try:
        run = str(uuid.uuid4())
        async with asyncio.timeout(PROMPT_S):
            received = [e async for e in reader.follow(run, idle_timeout=0.5)]
        assert received == []
    finally:
        await reader.close()
