"""The durable event log of runs: every event of a run, in order, replayable (canvas spec, section 10).

A run publishes numbered events to its ``EventBus`` wherever it executes (the CLI, the API
process, a Prefect worker). An ``EventLogWriter`` subscribed to that bus appends them to an
``EventLog`` in batches, off the engine's hot path; the API's SSE endpoint reads them back with
``EventLog.follow``: everything after ``Last-Event-ID``, then the live events, ending after the
run's final event (``FINAL_EVENT_TYPES``), or after an idle timeout without a new event.

Two stores:

``SqlEventLog`` (``sql.py``)
    SQLAlchemy async (SQLite through aiosqlite, PostgreSQL through asyncpg), one row per event
    in the table ``fm_events``. **That table is owned by the event log**, which creates it itself
    (``ensure_schema``, lazily on first use); it is not part of the API's Alembic migrations,
    which manage only the API's own tables (an Alembic autogenerate run should ignore it).
    ``follow`` waits for notifications on PostgreSQL (``append`` sends NOTIFY, one connection
    per log LISTENs: ``pg_listener.py``) and polls on SQLite. The engine is
    ``store.database.create_database_engine``'s, whose SQLite connections use WAL and a busy
    timeout so the writer and any number of readers, in any processes, do not fail with
    "database is locked".

``RedisEventLog`` (``redis_streams.py``)
    One Redis stream per run, ``flowmaestro:events:<execution_id>``, whose entry ids are
    ``<seq>-0``, so the stream's ordering and deduplication are the sequence numbers' own.
    ``follow`` blocks on ``XREAD``. The stream expires ``retention_days`` after its last append.

``event_log_from_settings`` builds one from ``EventLogSettings`` (``settings.py``);
``event_log_from_env`` from the ``FLOWMAESTRO_*`` environment. The writers are in ``writer.py``,
the protocol and the stored event in ``base.py``. Nothing here is process-global: every log
and writer is an object its owner creates and closes.
"""

from flows.event_log.base import EventLog, StoredEvent
from flows.event_log.redis_streams import REDIS_KEY_PREFIX, RedisEventLog
from flows.event_log.settings import EventLogSettings, event_log_from_env, event_log_from_settings
from flows.event_log.sql import EVENTS_TABLE, SqlEventLog
from flows.event_log.writer import EventLogWriter

__all__ = [
    "EVENTS_TABLE",
    "REDIS_KEY_PREFIX",
    "EventLog",
    "EventLogSettings",
    "EventLogWriter",
    "RedisEventLog",
    "SqlEventLog",
    "StoredEvent",
    "event_log_from_env",
    "event_log_from_settings",
]
