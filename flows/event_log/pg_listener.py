"""Waking the SQL event log's followers on PostgreSQL: ``AppendListener``, one LISTEN connection
per log (per process) that fans the appends' notifications out to the followers waiting on them.

``SqlEventLog.append`` sends ``NOTIFY <channel>, '<execution id>'`` in the transaction that
inserts the events, so the notification is delivered once they are committed (and visible), and
never for a batch that was rolled back. A follower registers the run it follows (``changes``),
then reads, then waits on its ``asyncio.Event``: a notification that arrives between its read and
its wait leaves the event set, so nothing appended in that window is missed.

A notification is lost when the listening connection drops (the server restarts, an operator
kills it): the listener reconnects, and on every (re)connection wakes all its followers, which
re-read. Followers also re-read every ``safety_poll_s`` on their own, in case of a loss nobody
noticed (a network that silently dropped the connection: the listener pings it as often).

asyncpg is imported where it is used: a process on SQLite or Redis never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

APPLICATION_NAME = "flowmaestro-event-listener"
"""The listening connection's ``application_name`` in ``pg_stat_activity``."""


class AppendListener:
    """One LISTEN connection on ``channel``, started by the first follower, kept until ``close()``.

    ``connect`` opens an asyncpg connection (``SqlEventLog`` passes its engine's connect
    arguments). Bound to the event loop it was started in: a follower in another loop gets no
    registration (``changes`` yields None) and polls instead."""

    def __init__(
        self,
        connect: Callable[[], Any],
        channel: str,
        *,
        ping_s: float = 5.0,
        reconnect_s: float = 1.0,
    ):
        self._connect = connect
        self.channel = channel
        self.ping_s = ping_s
        self.reconnect_s = reconnect_s
        self.connections = 0
        """How many times the listening connection was opened (tests, diagnostics)."""
        self.connected = False
        """Listening now: while not, followers poll (LISTEN refused, a reconnection under way)."""
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first_attempt: asyncio.Event | None = None
        self._closed = False

    async def start(self) -> bool:
        """Start listening (once) and wait for the first connection attempt; False when this
        listener cannot serve the running loop (closed, or started in another loop)."""
        loop = asyncio.get_running_loop()
        if self._closed or (self._loop is not None and self._loop is not loop):
            return False
        if self._task is None:
            self._loop, self._first_attempt = loop, asyncio.Event()
            self._task = loop.create_task(self._listen(), name=f"event log listener ({self.channel})")
        assert self._first_attempt is not None
        await self._first_attempt.wait()
        return True

    @contextlib.contextmanager
    def changes(self, execution_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever events of the run may have been appended; clear it before each
        read. Registered before the caller's first read, so nothing committed after that read
        goes unnoticed."""
        changed = asyncio.Event()
        self._waiting.setdefault(execution_id, set()).add(changed)
        try:
            yield changed
        finally:
            waiting = self._waiting.get(execution_id)
            if waiting is not None:
                waiting.discard(changed)
                if not waiting:
                    del self._waiting[execution_id]

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        for changed in self._waiting.get(payload, ()):
            changed.set()

    def _wake_all(self) -> None:
        for waiting in self._waiting.values():
            for changed in waiting:
                changed.set()

    async def _listen(self) -> None:
        assert self._first_attempt is not None
        while not self._closed:
            connection: Any = None
            try:
                connection = await self._connect()
                await self._listen_on(connection)
                log.warning("event log: the listening connection was closed; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "event log: listening for appends failed (%s: %s); followers poll until it reconnects",
                    type(exc).__name__,
                    exc,
                )
            finally:
                self.connected = False
                self._first_attempt.set()
                if connection is not None and not connection.is_closed():
                    connection.terminate()
            self._wake_all()
            await asyncio.sleep(self.reconnect_s)

    async def _listen_on(self, connection: Any) -> None:
        """LISTEN on ``connection`` until it is closed (or stops answering pings)."""
        assert self._first_attempt is not None
        dropped = asyncio.Event()
        connection.add_termination_listener(lambda _connection: dropped.set())
        await connection.add_listener(self.channel, self._notified)
        self.connections += 1
        self.connected = True
        # Whatever was appended while nobody listened: every follower re-reads.
        self._wake_all()
        self._first_attempt.set()
        while not dropped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dropped.wait(), self.ping_s)
            if not dropped.is_set():
                # A connection the network dropped silently reports nothing: ask.
                await asyncio.wait_for(connection.fetchval("SELECT 1"), self.ping_s)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            loop = task.get_loop()
            if loop is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        self._wake_all()
