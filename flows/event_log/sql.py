"""The event log in a SQL database: SQLAlchemy async, SQLite (aiosqlite) or PostgreSQL (asyncpg).

SQLAlchemy is imported where it is used: a process that keeps its events in Redis never loads
it (about half a second of start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar

from flows.event_log.base import IdleClock, StoredEvent, checked_after, strict_json
from flows.event_log.pg_listener import APPLICATION_NAME, AppendListener
from flows.events import FINAL_EVENT_TYPES, RunEvent, utcnow

log = logging.getLogger(__name__)

EVENTS_TABLE = "fm_events"
NOTIFY_CHANNEL = EVENTS_TABLE
"""PostgreSQL: the channel ``append`` notifies (payload: the execution id) and followers listen on."""
ADAPTER_OPTIONS = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback")
"""URL options SQLAlchemy's asyncpg adapter takes for itself: not for ``asyncpg.connect``."""
T = TypeVar("T")
P = ParamSpec("P")


def _database_calls(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A method whose database down raises ``Unavailable("database")`` (``store.unavailable``),
    imported at the first call, with SQLAlchemy."""

    @functools.wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
        from store.unavailable import database_calls

        async with database_calls():
            return await method(*args, **kwargs)

    return guarded


def _sql_table(metadata: Any) -> Any:
    from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table

    return Table(
        EVENTS_TABLE,
        metadata,
        Column("execution_id", String(64), primary_key=True),
        Column("seq", Integer, primary_key=True, autoincrement=False),
        Column("type", String(64), nullable=False),
        Column("data", JSON, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{EVENTS_TABLE}_created_at", "created_at"),
        comment="Run events, owned and created by flows.event_log (not by the API's Alembic migrations).",
    )


class SqlEventLog:
    """The event log in a SQL database (SQLAlchemy async: SQLite or PostgreSQL).

    The table ``fm_events`` (primary key ``(execution_id, seq)``) belongs to this class, which
    creates it on first use (``ensure_schema``); the API's tables are migrated by Alembic, this
    one is not.

    ``follow`` on PostgreSQL waits for notifications: ``append`` sends one per run in its
    transaction, and one connection per log listens for them (``AppendListener``), waking the
    followers of that run; each follower also re-reads every ``safety_poll_s`` seconds in case a
    notification was lost. On SQLite (no notifications), and while the listener cannot connect
    at all, ``follow`` polls every ``poll_interval`` seconds.
    With ``retention_days``, the events of runs whose last event is older than that are purged
    now and then (at most hourly, when a run's final event is appended); ``purge`` does it on
    demand.
    """

    purge_every_s = 3600.0
    gap_grace_s = 2.0
    """How long ``follow`` waits for a missing seq (a batch committed out of order) before
    skipping it."""

    def __init__(
        self,
        url: str,
        *,
        poll_interval: float = 0.1,
        safety_poll_s: float = 3.0,
        retention_days: float | None = None,
        engine_options: dict[str, Any] | None = None,
    ):
        from sqlalchemy import MetaData

        from store.database import create_database_engine

        self.url = url
        self.poll_interval = poll_interval
        self.safety_poll_s = safety_poll_s
        self.retention_days = retention_days
        self.metadata = MetaData()
        self.table = _sql_table(self.metadata)
        self.engine = create_database_engine(
            url, **{"pool_size": 10, "max_overflow": 20, "json_serializer": strict_json, **(engine_options or {})}
        )
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._last_purge = 0.0
        self.listener: AppendListener | None = (
            AppendListener(self._listening_connection, NOTIFY_CHANNEL, ping_s=safety_poll_s)
            if self.engine.dialect.name == "postgresql"
            else None
        )

    async def _listening_connection(self) -> Any:
        """A connection of its own for LISTEN (asyncpg, with the engine's connect arguments):
        a pooled one would be recycled, and pinged, under the listener."""
        import asyncpg

        from store.database import PG_CONNECT_TIMEOUT_S

        _, options = self.engine.dialect.create_connect_args(self.engine.url)
        for name in ADAPTER_OPTIONS:
            options.pop(name, None)
        settings = {**options.pop("server_settings", {}), "application_name": APPLICATION_NAME}
        return await asyncpg.connect(**{"timeout": PG_CONNECT_TIMEOUT_S, **options, "server_settings": settings})

    async def ensure_schema(self) -> None:
        """Create ``fm_events`` and its index unless they exist (``create_all(checkfirst=True)``).
        Called lazily on first use; safe when several processes start at once."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            for attempt in range(3):
                try:
                    async with self.engine.begin() as connection:
                        await connection.run_sync(self.metadata.create_all, checkfirst=True)
                    break
                except Exception:
                    # Another process created the table between our check and our CREATE.
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            self._schema_ready = True

    def _insert(self, connection: Any) -> Any:
        name = connection.dialect.name
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            return None
        return insert(self.table).on_conflict_do_nothing(index_elements=["execution_id", "seq"])

    @_database_calls
    async def append(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        await self.ensure_schema()
        now = utcnow()
        rows = [
            {"execution_id": e.execution_id, "seq": e.seq, "type": e.type, "data": e.payload(), "created_at": now}
            for e in events
        ]
        async with self.engine.begin() as connection:
            statement = self._insert(connection)
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                if statement is not None:
                    await connection.execute(statement, chunk)
                else:
                    await self._insert_missing(connection, chunk)
            if connection.dialect.name == "postgresql":
                await self._notify(connection, sorted({e.execution_id for e in events}))
        if (
            self.retention_days is not None
            and any(e.type in FINAL_EVENT_TYPES for e in events)
            and (time.monotonic() - self._last_purge >= self.purge_every_s or not self._last_purge)
        ):
            self._last_purge = time.monotonic()
            try:
                await self.purge(self.retention_days)
            except Exception:
                log.exception("event log: purging events older than %s days failed", self.retention_days)

    @staticmethod
    async def _notify(connection: Any, execution_ids: list[str]) -> None:
        """Tell the followers of these runs (in any process) that events were appended: sent in
        the inserting transaction, so delivered once the events are committed, and only then."""
        from sqlalchemy import text

        await connection.execute(
            text("SELECT pg_notify(:channel, id) FROM unnest(CAST(:ids AS text[])) AS id"),
            {"channel": NOTIFY_CHANNEL, "ids": execution_ids},
        )

    async def _insert_missing(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        """Other dialects: insert the rows that are not stored yet (one writer per run)."""
        from sqlalchemy import select, tuple_

        keys = [(r["execution_id"], r["seq"]) for r in rows]
        found = await connection.execute(
            select(self.table.c.execution_id, self.table.c.seq).where(
                tuple_(self.table.c.execution_id, self.table.c.seq).in_(keys)
            )
        )
        existing = {tuple(row) for row in found}
        missing = [r for r in rows if (r["execution_id"], r["seq"]) not in existing]
        if missing:
            await connection.execute(self.table.insert(), missing)

    @_database_calls
    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        from sqlalchemy import select

        checked_after(after)
        await self.ensure_schema()
        c = self.table.c
        query = (
            select(c.seq, c.type, c.data)
            .where(c.execution_id == execution_id, c.seq > after)
            .order_by(c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [StoredEvent(execution_id, seq, type_, data) for seq, type_, data in result]

    async def follow(
        self, execution_id: str, after: int = 0, *, idle_timeout: float | None = None
    ) -> AsyncIterator[StoredEvent]:
        last = checked_after(after)
        idle = IdleClock(idle_timeout)
        gap_since: float | None = None
        with await self._changes(execution_id) as changed:
            while True:
                if changed is not None:
                    changed.clear()  # before the read: an append after it sets it again
                batch = await self.read(execution_id, after=last, limit=1000)
                progressed = False
                for event in batch:
                    if event.seq != last + 1:
                        # A later batch is visible before an earlier one: wait for the gap to
                        # fill (briefly) so that nothing is skipped, then give up on it.
                        now = time.monotonic()
                        gap_since = gap_since or now
                        if now - gap_since < self.gap_grace_s:
                            break
                        log.warning(
                            "event log: run %s has no events %d..%d; skipping them",
                            execution_id,
                            last + 1,
                            event.seq - 1,
                        )
                    gap_since = None
                    last = event.seq
                    progressed = True
                    yield event
                    if event.type in FINAL_EVENT_TYPES:
                        return
                if progressed:
                    idle.restart()
                    if len(batch) == 1000 and gap_since is None:
                        continue  # more is waiting: no sleep
                elif idle.expired():
                    return
                await self._wait(changed, idle, gap=gap_since is not None)

    async def _changes(self, execution_id: str) -> contextlib.AbstractContextManager[asyncio.Event | None]:
        """The follower's wake-up (``AppendListener.changes``), registered and listening before
        its first read; ``None`` where there are no notifications (SQLite): it polls."""
        if self.listener is None or not await self.listener.start():
            return contextlib.nullcontext()
        return self.listener.changes(execution_id)

    async def _wait(self, changed: asyncio.Event | None, idle: IdleClock, *, gap: bool) -> None:
        """Until the run's events may have changed: notified, or after ``safety_poll_s`` in case
        a notification was lost; ``poll_interval`` while nobody listens (SQLite, LISTEN refused,
        a reconnection under way) and while a gap is waited out (its end is a time, not an
        append)."""
        if changed is None or gap:
            await asyncio.sleep(self.poll_interval)
            return
        listening = self.listener is not None and self.listener.connected
        timeout = self.safety_poll_s if listening else self.poll_interval
        remaining = idle.remaining()
        if remaining is not None:
            # Past an expired idle clock, one more read (of what came meanwhile) before giving up.
            timeout = max(0.0, min(timeout, remaining))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    @_database_calls
    async def purge(self, older_than_days: float) -> int:
        """Delete the events of every run whose newest event is older than ``older_than_days``
        (whole runs, so a long-paused run never loses the start of its log). Returns the number
        of events deleted."""
        from sqlalchemy import and_, delete, select

        await self.ensure_schema()
        cutoff = utcnow() - timedelta(days=older_than_days)
        c = self.table.c
        recent = select(c.execution_id).where(c.created_at >= cutoff).distinct()
        statement = delete(self.table).where(and_(c.created_at < cutoff, c.execution_id.not_in(recent)))
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    @_database_calls
    async def last_seq(self, execution_id: str) -> int:
        """The highest stored seq of the run (0 if none): where a resumed run's bus continues."""
        from sqlalchemy import func, select

        await self.ensure_schema()
        async with self.engine.connect() as connection:
            value = await connection.scalar(
                select(func.max(self.table.c.seq)).where(self.table.c.execution_id == execution_id)
            )
        return int(value or 0)

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self.engine.dispose()
