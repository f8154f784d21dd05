"""The durable event log of runs: every event of a run, in order, replayable (canvas spec, section 10).

A run publishes numbered events to its ``EventBus`` wherever it executes (the CLI, the API
process, a Prefect worker). An ``EventLogWriter`` subscribed to that bus appends them to an
``EventLog`` in batches, off the engine's hot path; the API's SSE endpoint reads them back with
``EventLog.follow``: everything after ``Last-Event-ID``, then the live events, ending after the
run's final event (``FINAL_EVENT_TYPES``).

Two stores:

``SqlEventLog``
    SQLAlchemy async (SQLite through aiosqlite, PostgreSQL through asyncpg), one row per event
    in the table ``fm_events``. **That table is owned by the event log**, which creates it itself
    (``ensure_schema``, lazily on first use); it is not part of the API's Alembic migrations,
    which manage only the API's own tables (an Alembic autogenerate run should ignore it).
    ``follow`` polls (SQLite has no notifications). On SQLite the connections use WAL and a busy
    timeout so the writer and any number of readers, in any processes, do not fail with
    "database is locked".

``RedisEventLog``
    One Redis stream per run, ``flowmaestro:events:<execution_id>``, whose entry ids are
    ``<seq>-0``, so the stream's ordering and deduplication are the sequence numbers' own.
    ``follow`` blocks on ``XREAD``. The stream expires ``retention_days`` after the final event.

``event_log_from_env`` picks one from the ``FLOWMAESTRO_*`` environment.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.events import FINAL_EVENT_TYPES, EventBus, RunEvent

log = logging.getLogger(__name__)

__all__ = [
    "EVENTS_TABLE", "EventLog", "EventLogRecorder", "EventLogSettings", "EventLogWriter", "RedisEventLog",
    "SqlEventLog", "StoredEvent", "event_log_from_env",
]

EVENTS_TABLE = "fm_events"
REDIS_KEY_PREFIX = "flowmaestro:events:"


def _dumps(value: Any) -> str:
    """Strict JSON for storage (and for browsers' ``JSON.parse``): values JSON cannot express are
    stored as text (dates, objects), NaN and infinities as null, rather than failing a batch."""
    try:
        return json.dumps(value, default=str, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_plain(value, set()), default=str, separators=(",", ":"), allow_nan=False)


def _plain(value: Any, seen: set[int]) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in seen:
            return "<cycle>"
        seen = seen | {id(value)}
        if isinstance(value, dict):
            return {k if isinstance(k, str) else str(k): _plain(v, seen) for k, v in value.items()}
        return [_plain(v, seen) for v in value]
    return value


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: ``data`` is ``RunEvent.payload()``, the JSON ``data`` of the SSE event."""

    execution_id: str
    seq: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    def sse(self) -> dict[str, str]:
        """The event for sse-starlette's ``EventSourceResponse``."""
        return {"id": str(self.seq), "event": self.type, "data": json.dumps(self.data)}


@runtime_checkable
class EventLog(Protocol):
    async def append(self, events: Sequence[RunEvent]) -> None:
        """Store events; appending an event that is already stored (same execution id and seq)
        does nothing, so a batch can be retried."""

    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """At most ``limit`` events of the run with ``seq > after``, ascending."""

    def follow(self, execution_id: str, after: int = 0, *,
               idle_timeout: float | None = None) -> AsyncIterator[StoredEvent]:
        """Every event after ``after``, then the live ones as they are appended, ending after
        the run's final event (or after ``idle_timeout`` seconds without a new event)."""

    async def last_seq(self, execution_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""
        ...

    async def close(self) -> None:
        ...


# --------------------------------------------------------------------------------------- SQL


def _sql_table(metadata: Any) -> Any:
    from sqlalchemy import JSON, Column, DateTime, Index, Integer, String, Table

    return Table(
        EVENTS_TABLE, metadata,
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
    one is not. ``follow`` polls every ``poll_interval`` seconds. With ``retention_days``, the
    events of runs that ended more than that long ago are purged now and then (at most hourly,
    when a run's final event is appended); ``purge`` does it on demand.
    """

    purge_every_s = 3600.0
    gap_grace_s = 2.0
    """How long ``follow`` waits for a missing seq (a batch committed out of order) before
    skipping it."""

    def __init__(self, url: str, *, poll_interval: float = 0.1, retention_days: float | None = None,
                 engine_options: dict[str, Any] | None = None):
        from sqlalchemy import MetaData, event
        from sqlalchemy.ext.asyncio import create_async_engine

        self.url = url
        self.poll_interval = poll_interval
        self.retention_days = retention_days
        self.metadata = MetaData()
        self.table = _sql_table(self.metadata)
        options: dict[str, Any] = {"json_serializer": _dumps}
        self._sqlite = url.startswith("sqlite")
        if self._sqlite:
            path = url.split("///", 1)[-1].split("?", 1)[0]
            if path and path != ":memory:" and not path.startswith("file:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                options.update(pool_size=10, max_overflow=20)
            options["connect_args"] = {"timeout": 30}  # sqlite3's busy timeout, seconds
        else:
            options.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        options.update(engine_options or {})
        self.engine = create_async_engine(url, **options)
        if self._sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._schema_ready = False
        self._schema_lock = asyncio.Lock()
        self._last_purge = 0.0

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

    async def append(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        await self.ensure_schema()
        now = datetime.now(timezone.utc)
        rows = [{"execution_id": e.execution_id, "seq": e.seq, "type": e.type, "data": e.payload(),
                 "created_at": now} for e in events]
        async with self.engine.begin() as connection:
            statement = self._insert(connection)
            for start in range(0, len(rows), 1000):
                chunk = rows[start:start + 1000]
                if statement is not None:
                    await connection.execute(statement, chunk)
                else:
                    await self._insert_missing(connection, chunk)
        if self.retention_days is not None and any(e.type in FINAL_EVENT_TYPES for e in events):
            if time.monotonic() - self._last_purge >= self.purge_every_s or not self._last_purge:
                self._last_purge = time.monotonic()
                try:
                    await self.purge(self.retention_days)
                except Exception:
                    log.exception("event log: purging events older than %s days failed", self.retention_days)

    async def _insert_missing(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        """Other dialects: insert the rows that are not stored yet (one writer per run)."""
        from sqlalchemy import select, tuple_

        keys = [(r["execution_id"], r["seq"]) for r in rows]
        found = await connection.execute(select(self.table.c.execution_id, self.table.c.seq)
                                         .where(tuple_(self.table.c.execution_id, self.table.c.seq).in_(keys)))
        existing = {tuple(row) for row in found}
        missing = [r for r in rows if (r["execution_id"], r["seq"]) not in existing]
        if missing:
            await connection.execute(self.table.insert(), missing)

    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        from sqlalchemy import select

        await self.ensure_schema()
        c = self.table.c
        query = (select(c.seq, c.type, c.data).where(c.execution_id == execution_id, c.seq > after)
                 .order_by(c.seq).limit(limit))
        async with self.engine.connect() as connection:
            result = await connection.execute(query)
            return [StoredEvent(execution_id, seq, type_, data) for seq, type_, data in result]

    async def follow(self, execution_id: str, after: int = 0, *,
                     idle_timeout: float | None = None) -> AsyncIterator[StoredEvent]:
        last = after
        last_news = time.monotonic()
        gap_since: float | None = None
        while True:
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
                    log.warning("event log: run %s has no events %d..%d; skipping them", execution_id,
                                last + 1, event.seq - 1)
                gap_since = None
                last = event.seq
                progressed = True
                yield event
                if event.type in FINAL_EVENT_TYPES:
                    return
            if progressed:
                last_news = time.monotonic()
                if len(batch) == 1000 and gap_since is None:
                    continue  # more is waiting: no sleep
            elif idle_timeout is not None and time.monotonic() - last_news >= idle_timeout:
                return
            await asyncio.sleep(self.poll_interval)

    async def purge(self, older_than_days: float) -> int:
        """Delete the events of every run whose newest event is older than ``older_than_days``
        (whole runs, so a long-paused run never loses the start of its log). Returns the number
        of events deleted."""
        from sqlalchemy import and_, delete, select

        await self.ensure_schema()
        cutoff = datetime.now(timezone.utc) - timedelta(days=older_than_days)
        c = self.table.c
        recent = select(c.execution_id).where(c.created_at >= cutoff).distinct()
        statement = delete(self.table).where(and_(c.created_at < cutoff, c.execution_id.not_in(recent)))
        async with self.engine.begin() as connection:
            result = await connection.execute(statement)
        return int(result.rowcount or 0)

    async def last_seq(self, execution_id: str) -> int:
        """The highest stored seq of the run (0 if none): where a resumed run's bus continues."""
        from sqlalchemy import func, select

        await self.ensure_schema()
        async with self.engine.connect() as connection:
            value = await connection.scalar(select(func.max(self.table.c.seq))
                                            .where(self.table.c.execution_id == execution_id))
        return int(value or 0)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # wait for a writer's lock instead of failing
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
    cursor.close()


# ------------------------------------------------------------------------------------- Redis


class RedisEventLog:
    """The event log in Redis: one stream per run, ``flowmaestro:events:<execution_id>``, entry
    ids ``<seq>-0`` with fields ``type`` and ``data`` (JSON). Redis refuses an id that is not
    greater than the stream's last one, which makes appends idempotent (and means a seq can
    never be inserted behind a later one). After the final event the stream expires in
    ``retention_days``.

    A batch is appended by one Lua script (``XADD`` of each event with its explicit id, errors
    "equal or smaller than the target stream top item" ignored, then ``EXPIRE`` when the batch
    holds the final event): one round trip, and two to three times less client CPU than a
    pipeline of ``XADD`` (redis-py parses each reply in Python). ``use_script=False`` pipelines
    the same commands instead, for servers that refuse scripts.

    ``follow`` blocks on ``XREAD`` (``block_ms`` at a time) on a connection pool of its own, so
    waiting followers never hold up appends."""

    def __init__(self, url: str, *, retention_days: float = 7.0, block_ms: int = 1000,
                 max_follow_connections: int = 1000, key_prefix: str = REDIS_KEY_PREFIX,
                 use_script: bool = True):
        import redis.asyncio as redis

        self.url = url
        self.retention_days = retention_days
        self.block_ms = block_ms
        self.key_prefix = key_prefix
        self.use_script = use_script
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self._append_script = self.redis.register_script(_APPEND_LUA)
        # Followers wait in XREAD BLOCK for up to block_ms: their own pool, which queues (rather
        # than refuses) followers beyond its size, with a socket timeout longer than the block.
        self._follow_pool = redis.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=max_follow_connections, timeout=None,
            socket_timeout=block_ms / 1000 + 10)
        self.follow_redis = redis.Redis(connection_pool=self._follow_pool)

    def key(self, execution_id: str) -> str:
        return self.key_prefix + execution_id

    @property
    def ttl_seconds(self) -> int:
        return max(1, int(self.retention_days * 86400))

    async def append(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        runs: dict[str, list[RunEvent]] = {}
        for event in sorted(events, key=lambda e: (e.execution_id, e.seq)):
            runs.setdefault(event.execution_id, []).append(event)
        for execution_id, batch in runs.items():
            ttl = self.ttl_seconds if any(e.type in FINAL_EVENT_TYPES for e in batch) else 0
            if self.use_script:
                args: list[Any] = [ttl]
                for event in batch:
                    args += [f"{event.seq}-0", event.type, _dumps(event.payload())]
                await self._append_script(keys=[self.key(execution_id)], args=args)
            else:
                await self._append_pipeline(execution_id, batch, ttl)

    async def _append_pipeline(self, execution_id: str, batch: list[RunEvent], ttl: int) -> None:
        from redis.exceptions import ResponseError

        key = self.key(execution_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd(key, {"type": event.type, "data": _dumps(event.payload())}, id=f"{event.seq}-0",
                          nomkstream=False)
            if ttl:
                pipe.expire(key, ttl)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and _ALREADY_STORED in str(result):
                continue  # already stored (or behind the stream's top): ignored
            if isinstance(result, Exception):
                raise result

    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        entries = await self.redis.xrange(self.key(execution_id), min=f"({after}-0" if after else "-",
                                          max="+", count=limit)
        return [self._stored(execution_id, entry_id, fields) for entry_id, fields in entries]

    async def follow(self, execution_id: str, after: int = 0, *,
                     idle_timeout: float | None = None) -> AsyncIterator[StoredEvent]:
        key = self.key(execution_id)
        last_id = f"{after}-0"
        last_news = time.monotonic()
        while True:
            block = self.block_ms
            if idle_timeout is not None:
                remaining = idle_timeout - (time.monotonic() - last_news)
                if remaining <= 0:
                    return
                block = max(1, min(block, int(remaining * 1000) + 1))
            response = await self.follow_redis.xread({key: last_id}, count=1000, block=block)
            entries = _xread_entries(response, key)
            if not entries:
                continue
            last_news = time.monotonic()
            for entry_id, fields in entries:
                event = self._stored(execution_id, entry_id, fields)
                last_id = entry_id
                yield event
                if event.type in FINAL_EVENT_TYPES:
                    return

    async def last_seq(self, execution_id: str) -> int:
        """The highest stored seq of the run (0 if none)."""
        entries = await self.redis.xrevrange(self.key(execution_id), count=1)
        return int(entries[0][0].split("-", 1)[0]) if entries else 0

    @staticmethod
    def _stored(execution_id: str, entry_id: str, fields: dict[str, str]) -> StoredEvent:
        return StoredEvent(execution_id, int(entry_id.split("-", 1)[0]), fields["type"], json.loads(fields["data"]))

    async def close(self) -> None:
        await self.follow_redis.aclose()
        await self._follow_pool.disconnect()
        await self.redis.aclose()


_ALREADY_STORED = "equal or smaller"
_APPEND_LUA = """
-- KEYS[1]: the run's stream; ARGV[1]: TTL in seconds to set afterwards (0: none);
-- then (id, type, data) per event, ascending.
local added = 0
for i = 2, #ARGV, 3 do
  local reply = redis.pcall('XADD', KEYS[1], ARGV[i], 'type', ARGV[i + 1], 'data', ARGV[i + 2])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply(reply.err)
    end
  else
    added = added + 1
  end
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return added
"""


def _xread_entries(response: Any, key: str) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply as a list of ``(id, fields)`` (RESP2: ``[[key, entries]]``, RESP3: a dict)."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.get(key) or [])
    entries: list[tuple[str, dict[str, str]]] = []
    for stream, items in response:
        if stream == key:
            entries.extend(items)
    return entries


# ------------------------------------------------------------------------------- configuration


class EventLogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", extra="ignore")

    redis_url: str | None = Field(None, description="Redis URL (redis://host:6379/0); when set, run events "
                                  "are kept in Redis streams instead of the database.")
    database_url: str | None = Field(None, description="SQLAlchemy async URL of the database that keeps run "
                                     "events (table fm_events) when no Redis is configured; SQLite under "
                                     "home by default.")
    home: Path = Field(default_factory=lambda: Path.home() / ".flowmaestro",
                       description="Where local state lives (the default SQLite database).")
    event_retention_days: float = Field(7.0, gt=0, description="How long the events of a finished run are "
                                        "kept (days).")

    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'flowmaestro.db'}"


def event_log_from_env(settings: EventLogSettings | None = None) -> EventLog:
    """``RedisEventLog`` when ``FLOWMAESTRO_REDIS_URL`` is set, else ``SqlEventLog`` on
    ``FLOWMAESTRO_DATABASE_URL`` (SQLite under ``FLOWMAESTRO_HOME`` by default); events are kept
    ``FLOWMAESTRO_EVENT_RETENTION_DAYS`` (7) days after their run ends."""
    settings = settings or EventLogSettings()
    if settings.redis_url:
        return RedisEventLog(settings.redis_url, retention_days=settings.event_retention_days)
    return SqlEventLog(settings.sqlalchemy_url(), retention_days=settings.event_retention_days)


# -------------------------------------------------------------------------------------- writer


class EventLogWriter:
    """Subscribes to one run's EventBus and appends its events to an EventLog in batches, off the engine's hot path.

    The subscriber only queues the event and wakes a background task, which appends batches of
    up to ``max_batch`` events, waiting at most ``max_delay_s`` for a batch to fill (not at all
    once the run's final event is queued). Batches are appended one after the other, in seq
    order. A failing append is retried ``retries`` times with exponential backoff (appends are
    idempotent), then the batch is logged as lost. The task ends once the final event is stored
    (and starts again should anything follow); ``close()`` flushes whatever is still queued.
    """

    def __init__(self, log: EventLog, *, max_batch: int = 200, max_delay_s: float = 0.05, retries: int = 5,
                 backoff_s: float = 0.2):
        self.log = log
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.stored = 0
        self.lost = 0
        self._queue: deque[RunEvent] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
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
            self._loop_thread = threading.get_ident()
            self._wake = asyncio.Event()

    def _on_event(self, event: RunEvent) -> None:
        """The bus subscriber: O(1), never blocks, never awaits, never raises."""
        self._queue.append(event)
        if event.type in FINAL_EVENT_TYPES:
            self._final_queued = True
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop yet: stored by the next event published in one, or close()
            self._bind(loop)
        if threading.get_ident() == self._loop_thread:
            self._kick()
        else:  # published from another thread (a sync node in a worker thread)
            try:
                loop.call_soon_threadsafe(self._kick)
            except RuntimeError:
                pass  # the loop is closed; close() reports what was not stored

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
                except asyncio.TimeoutError:
                    pass
            count = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            batch.sort(key=lambda e: e.seq)  # a no-op unless events were published from threads
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
                    log.error("event log: lost %d events of run %s (seq %d..%d) after %d attempts: %s: %s",
                              len(batch), batch[0].execution_id, batch[0].seq, batch[-1].seq, attempt + 1,
                              type(exc).__name__, exc)
                    return
                log.warning("event log: appending %d events failed (%s: %s); retrying in %.2fs", len(batch),
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        """Store everything still queued (call when the run ends). Returns once it is stored,
        or given up on after the retries."""
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


class EventLogRecorder:
    """A run listener (``flows.flow.add_run_listener(recorder)``) that writes every run of this
    process to ``log``: one ``EventLogWriter`` per run. ``close()`` flushes them all (call it
    before the process exits); a writer also finishes by itself once its run's final event is
    stored."""

    def __init__(self, log: EventLog, **writer_options: Any):
        self.log = log
        self.writer_options = writer_options
        self._writers: dict[str, EventLogWriter] = {}

    def __call__(self, bus: EventBus) -> None:
        self._writers = {k: w for k, w in self._writers.items() if not w.finished}
        writer = EventLogWriter(self.log, **self.writer_options)
        writer.attach(bus)
        self._writers[bus.execution_id] = writer

    def writer(self, execution_id: str) -> EventLogWriter | None:
        return self._writers.get(execution_id)

    async def flush(self, execution_id: str) -> None:
        """Store everything queued for that run."""
        writer = self._writers.pop(execution_id, None)
        if writer is not None:
            await writer.close()

    async def close(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        await asyncio.gather(*(w.close() for w in writers))

