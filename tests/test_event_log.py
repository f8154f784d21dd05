"""The durable event log (flows/event_log/) against real stores: SQLite in tmp_path, a
throwaway PostgreSQL database created for the session, and Redis.

Every test uses fresh execution ids (uuid4). Waits are gated on what happened (an event
received, a writer finished), never on sleeping long enough; timeouts are generous and only
there to turn a hang into a failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from flows.event_log import (
    EventLog,
    EventLogSettings,
    EventLogWriter,
    RedisEventLog,
    SqlEventLog,
    StoredEvent,
    event_log_from_env,
    event_log_from_settings,
)
from flows.events import EventBus, RunEvent

PG_ADMIN_DSN = os.environ.get("FLOWMAESTRO_TEST_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FLOWMAESTRO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 120.0


# ------------------------------------------------------------------------------------ fixtures


def _admin(statement: str) -> None:
    """One statement on PostgreSQL's admin database, in a thread of its own: ``pg_url`` is
    created lazily, from inside the event loop of the first test that asks for it."""

    async def execute() -> None:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await admin.execute(statement)
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, execute()).result()


@pytest.fixture(scope="session")
def pg_url():
    """A throwaway PostgreSQL database for the session, dropped at the end."""
    name = f"fm_test_{uuid.uuid4().hex[:16]}"
    _admin(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    yield f"{base}/{name}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Logs:
    """Makes event logs of one backend (several instances stand for several processes:
    the run's writer, the API's readers) and cleans up after the test."""

    def __init__(self, backend: str, url: str):
        self.backend = backend
        self.url = url
        self._logs: list[Any] = []
        self._ids: list[str] = []

    def new(self, **options: Any) -> Any:
        if self.backend == "redis":
            log = RedisEventLog(self.url, **options)
        else:
            log = SqlEventLog(self.url, **{"poll_interval": 0.02, **options})
        self._logs.append(log)
        return log

    def run_id(self) -> str:
        execution_id = str(uuid.uuid4())
        self._ids.append(execution_id)
        return execution_id

    async def aclose(self) -> None:
        for log in self._logs:
            if isinstance(log, RedisEventLog) and self._ids:
                await log.redis.delete(*(log.key(i) for i in self._ids))
                break
        for log in self._logs:
            await log.close()


def _url(backend: str, tmp_path: Any, pg_url: str) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
    if backend == "postgresql":
        return pg_url
    return REDIS_URL


ON_SERVICES = pytest.mark.services  # PostgreSQL or Redis: not in make test-fast


def _pg_url_if_needed(request) -> str | None:
    """The session's PostgreSQL database, created only when a postgresql test asks for it."""
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=ON_SERVICES), pytest.param("redis", marks=ON_SERVICES)]
)
async def logs(request, tmp_path):
    factory = Logs(request.param, _url(request.param, tmp_path, _pg_url_if_needed(request)))
    yield factory
    await factory.aclose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=ON_SERVICES)])
async def sql_logs(request, tmp_path):
    factory = Logs(request.param, _url(request.param, tmp_path, _pg_url_if_needed(request)))
    yield factory
    await factory.aclose()


@pytest.fixture
async def redis_logs():
    factory = Logs("redis", REDIS_URL)
    yield factory
    await factory.aclose()


# ------------------------------------------------------------------------------------- helpers


def event(execution_id: str, seq: int, type_: str | None = None, **data: Any) -> RunEvent:
    type_ = type_ or ("execution:started" if seq == 1 else ("stream:chunk" if seq % 3 else "node:completed"))
    node = None if type_.startswith("execution:") else f"node-{seq % 7}"
    return RunEvent(
        seq,
        type_,
        execution_id,
        f"2026-01-01T00:00:{seq % 60:02d}+00:00",
        node,
        None if node is None else (seq % 5,),
        {"i": seq, **data},
    )


def run_events(execution_id: str, count: int, final: str = "execution:completed") -> list[RunEvent]:
    """A run of ``count`` events, the last one final."""
    return [event(execution_id, seq, final if seq == count else None) for seq in range(1, count + 1)]


async def append_in_chunks(log: EventLog, events: Sequence[RunEvent], size: int, pause: float = 0.0) -> None:
    for start in range(0, len(events), size):
        await log.append(events[start : start + size])
        await asyncio.sleep(pause)


async def collect(
    log: EventLog,
    execution_id: str,
    after: int = 0,
    *,
    on_event: Callable[[StoredEvent], bool | None] | None = None,
    idle_timeout: float | None = None,
) -> list[StoredEvent]:
    """Follow a run; stop early when ``on_event`` returns True."""
    received: list[StoredEvent] = []
    async with asyncio.timeout(TIMEOUT):
        async with contextlib.aclosing(log.follow(execution_id, after, idle_timeout=idle_timeout)) as stream:
            async for stored in stream:
                received.append(stored)
                if on_event is not None and on_event(stored):
                    break
    return received


async def read_all(log: EventLog, execution_id: str) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    while True:
        page = await log.read(execution_id, after=out[-1].seq if out else 0, limit=1000)
        if not page:
            return out
        out.extend(page)


def seqs(events: Sequence[StoredEvent | RunEvent]) -> list[int]:
    return [e.seq for e in events]


def assert_exactly(received: Sequence[StoredEvent], first: int, last: int) -> None:
    got = seqs(received)
    assert got == list(range(first, last + 1)), (
        f"expected seq {first}..{last}, got {len(got)} events"
        f" (missing {sorted(set(range(first, last + 1)) - set(got))[:10]},"
        f" unordered={any(b <= a for a, b in zip(got, got[1:]))})"
    )


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.005)


# --------------------------------------------------------------------------------------- tests


async def test_append_and_read_after(logs):
    log = logs.new()
    run = logs.run_id()
    events = run_events(run, 25, final="execution:failed")
    await log.append(events)

    everything = await log.read(run)
    assert_exactly(everything, 1, 25)
    assert [(s.execution_id, s.type, s.data) for s in everything] == [
        (e.execution_id, e.type, e.payload()) for e in events
    ]
    assert_exactly(await log.read(run, after=10), 11, 25)
    assert_exactly(await log.read(run, after=10, limit=5), 11, 15)
    assert await log.read(run, after=25) == []
    assert await log.read(logs.run_id()) == []

    sse = everything[2].sse()
    assert sse["id"] == "3" and sse["event"] == events[2].type
    assert sse["data"] == StoredEvent(run, 3, events[2].type, events[2].payload()).sse()["data"]
    assert everything[-1].final and not everything[0].final

    # Another instance (another process) reads the same.
    assert_exactly(await logs.new().read(run, after=20), 21, 25)


async def test_append_is_idempotent(logs):
    variants = [{}, {"use_script": False}] if logs.backend == "redis" else [{}]  # Redis: Lua and pipeline
    for options in variants:
        log = logs.new(**options)
        run = logs.run_id()
        first = run_events(run, 10, final="node:completed")
        await log.append(first)
        await log.append(first)
        await log.append([event(run, seq, "node:error", changed=True) for seq in range(1, 11)])  # same ids: ignored
        await log.append([event(run, seq) for seq in range(8, 16)])  # overlapping batch: only 11..15 are new
        await log.append([])

        stored = await log.read(run)
        assert_exactly(stored, 1, 15)
        assert [s.data for s in stored[:10]] == [e.payload() for e in first]
        assert all("changed" not in s.data for s in stored)


async def test_payloads_json_cannot_express_are_stored_as_strict_json(logs):
    log = logs.new()
    run = logs.run_id()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    odd = event(
        run,
        1,
        "node:completed",
        output={"nan": float("nan"), "inf": float("-inf"), "when": when, "tags": ("a", "b"), 7: "int key"},
    )
    plain = event(run, 2, "node:completed", output={"when": when})
    await log.append([odd, plain])
    first, second = await log.read(run)
    assert first.data["output"] == {"nan": None, "inf": None, "when": str(when), "tags": ["a", "b"], "7": "int key"}
    assert second.data["output"] == {"when": str(when)}
    assert "NaN" not in first.sse()["data"]


async def test_follow_replays_then_receives_live_events_and_stops_after_final(logs):
    writer, reader = logs.new(), logs.new()
    run = logs.run_id()
    events = run_events(run, 300)
    await writer.append(events[:50])
    replayed = asyncio.Event()

    def on_event(stored: StoredEvent) -> None:
        if stored.seq == 50:
            replayed.set()

    follower = asyncio.create_task(collect(reader, run, on_event=on_event))
    async with asyncio.timeout(TIMEOUT):
        await replayed.wait()  # the replay is through: what follows is live
    assert not follower.done()
    await append_in_chunks(writer, events[50:], size=7, pause=0.002)
    received = await asyncio.wait_for(follower, TIMEOUT)  # ends by itself after the final event
    assert_exactly(received, 1, 300)
    assert received[-1].type == "execution:completed"

    # A run that already ended: replay only, then the stream ends.
    assert_exactly(await collect(reader, run, after=120), 121, 300)
    # Nothing after the final event: ends at once.
    assert await collect(reader, run, after=300, idle_timeout=0.5) == []


async def test_follower_resuming_after_last_seen_receives_exactly_the_rest(logs):
    writer, reader = logs.new(), logs.new()
    run = logs.run_id()
    events = run_events(run, 200, final="execution:cancelled")
    await writer.append(events[:40])
    replayed = asyncio.Event()

    def first_on_event(stored: StoredEvent) -> bool:
        if stored.seq == 40:
            replayed.set()
        return stored.seq == 73  # the client goes away here

    first = asyncio.create_task(collect(reader, run, on_event=first_on_event))
    async with asyncio.timeout(TIMEOUT):
        await replayed.wait()
    await append_in_chunks(writer, events[40:80], size=3)
    head = await asyncio.wait_for(first, TIMEOUT)
    assert_exactly(head, 1, 73)

    # It reconnects with Last-Event-ID: 73 while the run goes on.
    second = asyncio.create_task(collect(reader, run, after=head[-1].seq))
    await append_in_chunks(writer, events[80:], size=11, pause=0.002)
    rest = await asyncio.wait_for(second, TIMEOUT)
    assert_exactly(rest, 74, 200)


async def test_twenty_concurrent_followers_of_a_2000_event_run(logs):
    writer, reader = logs.new(), logs.new()  # the run's process, the API's process
    run = logs.run_id()
    events = run_events(run, 2000)
    early = [asyncio.create_task(collect(reader, run)) for _ in range(10)]
    await append_in_chunks(writer, events[:1000], size=20, pause=0.001)
    late = [asyncio.create_task(collect(reader, run, after=0)) for _ in range(5)]
    midway = [asyncio.create_task(collect(reader, run, after=500 + 37 * i)) for i in range(5)]
    await append_in_chunks(writer, events[1000:], size=20, pause=0.001)

    results = await asyncio.wait_for(asyncio.gather(*early, *late, *midway), TIMEOUT)
    assert len(results) == 20
    for received in results[:15]:
        assert_exactly(received, 1, 2000)
    for i, received in enumerate(results[15:]):
        assert_exactly(received, 500 + 37 * i + 1, 2000)


async def test_concurrent_runs_writers_and_readers_under_load(logs):
    """Several runs written at once by separate instances (separate processes), followed at
    the same time: no "database is locked", nothing lost."""
    runs = [logs.run_id() for _ in range(4)]
    writers = [logs.new() for _ in runs]
    reader = logs.new()
    followers = [asyncio.create_task(collect(reader, run)) for run in runs for _ in range(3)]
    await asyncio.gather(*(append_in_chunks(w, run_events(run, 1000), size=5) for w, run in zip(writers, runs)))
    results = await asyncio.wait_for(asyncio.gather(*followers), TIMEOUT)
    for received in results:
        assert_exactly(received, 1, 1000)
    for run in runs:
        assert_exactly(await read_all(reader, run), 1, 1000)


async def test_follow_ends_after_idle_timeout(logs):
    log = logs.new()
    run = logs.run_id()
    await log.append(run_events(run, 5, final="execution:paused"))  # not final
    received = await collect(log, run, idle_timeout=0.5)
    assert_exactly(received, 1, 5)
    assert await collect(log, logs.run_id(), idle_timeout=0.3) == []


async def test_a_slow_consumer_does_not_count_as_idle(logs):
    """The idle clock measures time without new events, not the time the consumer spends on
    them: a consumer slower than ``idle_timeout`` still gets what was appended meanwhile."""
    writer, reader = logs.new(), logs.new()
    run = logs.run_id()
    events = run_events(run, 30)
    await writer.append(events[:1])
    received: list[StoredEvent] = []
    async with asyncio.timeout(TIMEOUT):
        async with contextlib.aclosing(reader.follow(run, idle_timeout=0.2)) as stream:
            async for stored in stream:
                received.append(stored)
                if stored.seq == 1:
                    await writer.append(events[1:])  # the run goes on while the consumer is busy
                    await asyncio.sleep(0.5)  # longer than idle_timeout, with no new event to wait for
    assert_exactly(received, 1, 30)


async def test_writer_stores_5000_bus_events_in_order(logs):
    log, reader = logs.new(), logs.new()
    run = logs.run_id()
    bus = EventBus(run)
    writer = EventLogWriter(log)
    writer.attach(bus)
    follower = asyncio.create_task(collect(reader, run))

    published: list[RunEvent] = [bus.publish("execution:started", workflow="load")]
    for i in range(1, 4999):
        if i % 2:
            published.append(bus.publish("stream:chunk", node_id="llm", path=(i % 3,), index=i, text=f"t{i}"))
        else:
            published.append(bus.publish("node:completed", node_id=f"n{i}", status="completed", output={"i": i}))
        if i % 250 == 0:
            await asyncio.sleep(0)  # the engine yields now and then; batches go out meanwhile
        if i % 1000 == 0:
            await asyncio.sleep(0.02)
    published.append(bus.publish("execution:completed", status="completed"))
    await writer.close()

    assert writer.stored == 5000 and writer.lost == 0 and writer.pending == 0
    stored = await read_all(reader, run)
    assert_exactly(stored, 1, 5000)
    assert [(s.type, s.data) for s in stored] == [(e.type, e.payload()) for e in published]
    assert_exactly(await asyncio.wait_for(follower, TIMEOUT), 1, 5000)


async def test_writer_finishes_by_itself_once_the_final_event_is_stored(logs):
    log = logs.new()
    run = logs.run_id()
    bus = EventBus(run)
    writer = EventLogWriter(log, max_delay_s=30.0)  # the final event must not wait for the delay
    writer.attach(bus)
    for i in range(10):
        bus.publish("node:started", node_id=f"n{i}")
    bus.publish("execution:failed", status="failed")
    await wait_for(lambda: writer.finished, "the writer to finish")
    assert_exactly(await log.read(run), 1, 11)
    await writer.close()  # nothing left: returns at once


class FlakyLog:
    """Fails the first ``failures`` appends, then appends to ``inner``."""

    def __init__(self, inner: EventLog, failures: int):
        self.inner = inner
        self.failures = failures
        self.calls = 0

    async def append(self, events: Sequence[RunEvent]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            if events and self.calls % 2:
                await self.inner.append(events[: len(events) // 2])  # a partly applied batch
            raise ConnectionError("store unavailable")
        await self.inner.append(events)


async def test_writer_retries_a_failing_store(logs, caplog):
    log = logs.new()
    run = logs.run_id()
    flaky = FlakyLog(log, failures=3)
    bus = EventBus(run)
    writer = EventLogWriter(flaky, backoff_s=0.01)  # type: ignore[arg-type]
    writer.attach(bus)
    for i in range(999):
        bus.publish("stream:chunk", node_id="llm", index=i)
    bus.publish("execution:completed", status="completed")
    with caplog.at_level(logging.WARNING, logger="flows.event_log"):
        await writer.close()
    assert writer.lost == 0 and writer.stored == 1000
    assert_exactly(await read_all(log, run), 1, 1000)
    assert "retrying" in caplog.text


async def test_writer_gives_up_after_retries_and_logs_the_count_lost(caplog):
    class DownLog(FlakyLog):
        async def append(self, events: Sequence[RunEvent]) -> None:
            self.calls += 1
            raise ConnectionError("store down")

    down = DownLog(None, 0)  # type: ignore[arg-type]
    bus = EventBus(str(uuid.uuid4()))
    writer = EventLogWriter(down, max_batch=5, retries=2, backoff_s=0.001)  # type: ignore[arg-type]
    writer.attach(bus)
    for i in range(7):
        bus.publish("node:started", node_id=f"n{i}")
    with caplog.at_level(logging.ERROR, logger="flows.event_log"):
        await writer.close()
    assert writer.lost == 7 and writer.stored == 0
    assert down.calls == 2 * 3  # two batches, three attempts each
    assert "lost 5 events" in caplog.text and "lost 2 events" in caplog.text


async def test_sql_purge_deletes_runs_whose_last_event_is_older_than_retention(sql_logs):
    from sqlalchemy import update

    log = sql_logs.new()
    old, recent, mixed = sql_logs.run_id(), sql_logs.run_id(), sql_logs.run_id()
    for run in (old, recent, mixed):
        await log.append(run_events(run, 30))

    async def age(run: str, days: float, up_to_seq: int | None = None) -> None:
        c = log.table.c
        condition = c.execution_id == run
        if up_to_seq is not None:
            condition = condition & (c.seq <= up_to_seq)
        async with log.engine.begin() as connection:
            await connection.execute(
                update(log.table).where(condition).values(created_at=datetime.now(UTC) - timedelta(days=days))
            )

    await age(old, 10)
    await age(mixed, 10, up_to_seq=20)  # a long run: its first events are old, its last are recent
    assert await log.purge(7) == 30
    assert await log.read(old) == []
    assert_exactly(await log.read(recent), 1, 30)
    assert_exactly(await log.read(mixed), 1, 30)
    assert await log.purge(7) == 0

    # With retention_days, appending a final event purges (at most hourly).
    await age(recent, 8)
    retaining = sql_logs.new(retention_days=7)
    another = sql_logs.run_id()
    await retaining.append(run_events(another, 3))
    assert await log.read(recent) == []
    assert_exactly(await log.read(another), 1, 3)
    assert_exactly(await log.read(mixed), 1, 30)


async def test_sql_follow_waits_for_a_gap_to_fill_then_skips_it(sql_logs, caplog):
    """Two writers committing out of order must not make a follower skip events."""
    writer, reader = sql_logs.new(), sql_logs.new()
    reader.gap_grace_s = 60.0
    run = sql_logs.run_id()
    events = run_events(run, 10)
    await writer.append(events[:5] + events[7:])  # 6 and 7 are late
    seen_five = asyncio.Event()
    follower = asyncio.create_task(collect(reader, run, on_event=lambda s: seen_five.set() if s.seq == 5 else None))
    async with asyncio.timeout(TIMEOUT):
        await seen_five.wait()
    await asyncio.sleep(0.2)  # the follower sees 8..10 but holds them back
    assert not follower.done()
    await writer.append(events[5:7])
    assert_exactly(await asyncio.wait_for(follower, TIMEOUT), 1, 10)

    # A gap that never fills is skipped after the grace period, with a warning.
    other = sql_logs.run_id()
    await writer.append([e for e in run_events(other, 10) if e.seq not in (3, 4)])
    reader.gap_grace_s = 0.2
    with caplog.at_level(logging.WARNING, logger="flows.event_log"):
        received = await collect(reader, other)
    assert seqs(received) == [1, 2, 5, 6, 7, 8, 9, 10]
    assert "no events 3..4" in caplog.text


async def test_sql_schema_is_created_lazily_by_concurrent_instances(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'fresh.db'}"
    instances = [SqlEventLog(url) for _ in range(4)]
    try:
        run = str(uuid.uuid4())
        await asyncio.gather(*(log.append([event(run, i + 1)]) for i, log in enumerate(instances)))
        assert_exactly(await instances[0].read(run), 1, 4)
        assert await instances[1].last_seq(run) == 4
        async with instances[0].engine.connect() as connection:
            from sqlalchemy import text

            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            timeout = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
        assert mode == "wal" and timeout == 30000
    finally:
        for log in instances:
            await log.close()


async def test_sqlite_engines_share_one_setup(tmp_path):
    """store.database.create_database_engine, behind both the event log and the API's tables."""
    from sqlalchemy import text

    from store.database import create_database_engine
    from store.db import make_engine

    path = tmp_path / "new" / "dir" / "shared.db"
    engines = [
        make_engine(f"sqlite+aiosqlite:///{path}"),
        SqlEventLog(f"sqlite+aiosqlite:///{path}").engine,
        create_database_engine("sqlite+aiosqlite:///:memory:", pool_size=10, max_overflow=20),
    ]
    try:
        found = []
        for engine in engines:
            async with engine.connect() as connection:
                found.append(
                    [
                        (await connection.execute(text(f"PRAGMA {name}"))).scalar()
                        for name in ("busy_timeout", "foreign_keys", "journal_mode")
                    ]
                )
        assert found == [[30000, 1, "wal"], [30000, 1, "wal"], [30000, 1, "memory"]]  # in memory: no WAL
        assert path.parent.is_dir()
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.services
@pytest.mark.parametrize("use_script", [True, False], ids=["lua", "pipeline"])
async def test_redis_stream_expires_retention_days_after_its_last_append(redis_logs, use_script):
    log = redis_logs.new(retention_days=0.5, use_script=use_script)
    run = redis_logs.run_id()
    key = log.key(run)
    events = run_events(run, 20)
    await log.append(events[:10])
    # A run whose process dies never writes its final event: its stream expires all the same.
    assert 43000 < await log.redis.ttl(key) <= 43200
    await log.redis.expire(key, 100)  # as if the run had been quiet for almost half a day
    await log.append(events[10:19])
    assert 43000 < await log.redis.ttl(key) <= 43200  # every append restarts the clock
    await log.redis.expire(key, 100)
    await log.append(events[19:])
    assert 43000 < await log.redis.ttl(key) <= 43200  # the final event too
    assert await log.last_seq(run) == 20
    entries = await log.redis.xrange(key, count=2)
    assert [entry_id for entry_id, _ in entries] == ["1-0", "2-0"]  # seq == stream id


@pytest.mark.services
@pytest.mark.parametrize("use_script", [True, False], ids=["lua", "pipeline"])
async def test_redis_append_raises_other_errors(redis_logs, use_script):
    from redis.exceptions import ResponseError

    log = redis_logs.new(use_script=use_script)
    run = redis_logs.run_id()
    await log.redis.set(log.key(run), "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await log.append(run_events(run, 3))


def test_event_log_from_env(monkeypatch, tmp_path):
    for name in ("FLOWMAESTRO_REDIS_URL", "FLOWMAESTRO_DATABASE_URL", "FLOWMAESTRO_EVENT_RETENTION_DAYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLOWMAESTRO_HOME", str(tmp_path / "home"))
    sql = event_log_from_env()
    assert isinstance(sql, SqlEventLog) and isinstance(sql, EventLog)
    assert sql.url == f"sqlite+aiosqlite:///{tmp_path / 'home' / 'flowmaestro.db'}"
    assert sql.retention_days == 7.0

    monkeypatch.setenv("FLOWMAESTRO_DATABASE_URL", "postgresql+asyncpg://u@db/x")
    monkeypatch.setenv("FLOWMAESTRO_EVENT_RETENTION_DAYS", "2.5")
    sql = event_log_from_env()
    assert isinstance(sql, SqlEventLog) and sql.url.startswith("postgresql+asyncpg://") and sql.retention_days == 2.5

    monkeypatch.setenv("FLOWMAESTRO_REDIS_URL", REDIS_URL)
    redis_log = event_log_from_env()
    assert isinstance(redis_log, RedisEventLog) and isinstance(redis_log, EventLog)
    assert redis_log.retention_days == 2.5
    assert EventLogSettings.model_fields["redis_url"].description


async def test_event_log_from_settings_uses_the_settings_given_not_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWMAESTRO_REDIS_URL", "redis://not-this-one:1/0")
    monkeypatch.setenv("FLOWMAESTRO_EVENT_RETENTION_DAYS", "99")
    url = f"sqlite+aiosqlite:///{tmp_path / 'injected.db'}"
    # model_construct: no environment at all, as when a caller injects its own settings.
    sql = event_log_from_settings(
        EventLogSettings.model_construct(redis_url=None, database_url=url, home=tmp_path, event_retention_days=3.0)
    )
    try:
        assert isinstance(sql, SqlEventLog) and sql.url == url and sql.retention_days == 3.0
    finally:
        await sql.close()
    redis_log = event_log_from_settings(
        EventLogSettings.model_construct(
            redis_url=REDIS_URL, database_url=None, home=tmp_path, event_retention_days=0.25
        )
    )
    try:
        assert isinstance(redis_log, RedisEventLog) and redis_log.url == REDIS_URL
        assert redis_log.ttl_seconds == 6 * 3600
    finally:
        await redis_log.close()


@pytest.mark.parametrize("final", ["execution:completed", "execution:failed", "execution:cancelled"])
async def test_a_follower_ends_at_each_final_event_and_not_at_a_pause(tmp_path, final):
    log = SqlEventLog(f"sqlite+aiosqlite:///{tmp_path / 'final.db'}", poll_interval=0.02)
    try:
        run = str(uuid.uuid4())
        await log.append(
            [event(run, 1), event(run, 2, "execution:paused"), event(run, 3, "execution:resumed"), event(run, 4, final)]
        )
        received = await collect(log, run)  # returns only because the stream ends by itself
        assert [e.type for e in received] == ["execution:started", "execution:paused", "execution:resumed", final]
        assert received[-1].final and not any(e.final for e in received[:-1])
    finally:
        await log.close()


async def test_a_held_final_event_is_stored_only_once_released(tmp_path):
    from flows.event_log import EventLogWriter, SqlEventLog
    from flows.events import EventBus

    log = SqlEventLog(f"sqlite+aiosqlite:///{tmp_path / 'held.db'}")
    writer = EventLogWriter(log, hold_final=True)
    bus = EventBus("run-held")
    writer.attach(bus)
    bus.publish("execution:started", status="running")
    bus.publish("execution:completed", status="completed", output=1)
    # The writer has stored what it was given and has nothing queued: the held final event
    # could reach the log only through its queue, so it is not there, now or later.
    await wait_for(lambda: writer.stored == 1, "the first event stored")
    assert writer.pending == 0 and not writer.finished
    assert [e.type for e in await log.read("run-held", after=0, limit=10)] == ["execution:started"]
    writer.release_final()
    await writer.close()
    assert [e.type for e in await log.read("run-held", after=0, limit=10)] == [
        "execution:started",
        "execution:completed",
    ]
    await log.close()
