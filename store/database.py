"""The one way FlowMaestro opens a SQL database: an async SQLAlchemy engine, SQLite (through
aiosqlite) or PostgreSQL (through asyncpg). Used by the store's tables (``store.db``) and by
the SQL event log (``flows.event_log``), which may share one SQLite file.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def utcnow() -> datetime:
    """Now, timezone-aware (UTC): every timestamp FlowMaestro stores or sends."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored timestamp, timezone-aware: SQLite gives back naive datetimes, and FlowMaestro
    stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


SQLITE_BUSY_TIMEOUT_S = 30
"""How long a SQLite connection waits for another's write lock before "database is locked"."""
PG_CONNECT_TIMEOUT_S = 5
PG_COMMAND_TIMEOUT_S = 10
"""A PostgreSQL server that hangs (overloaded, stopped, a network that drops packets) fails a
query after this long instead of holding the request, the run or the health check forever."""


def create_database_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    command_timeout_s: float | None = PG_COMMAND_TIMEOUT_S,
    **options: Any,
) -> AsyncEngine:
    """An async engine on ``url``; ``options`` go to SQLAlchemy's ``create_async_engine``.

    SQLite: the database file's directory is created; every connection uses WAL (readers never
    block the writer, nor it them, so any number of processes can share the file), waits
    ``SQLITE_BUSY_TIMEOUT_S`` for a writer's lock instead of failing, and enforces foreign keys.
    ``pool_size`` and ``max_overflow`` apply to a database named by its path only (an in-memory
    database has a single connection, no pool to size). Other databases: connections are
    pinged before use, so that one the server closed is replaced instead of failing a request;
    PostgreSQL connects within ``PG_CONNECT_TIMEOUT_S`` and each statement ends within ``command_timeout_s`` (None: no
    bound, for migrations, which may take long on big tables).
    """
    parsed = make_url(url)
    pool = {
        name: value for name, value in (("pool_size", pool_size), ("max_overflow", max_overflow)) if value is not None
    }
    if parsed.get_backend_name() != "sqlite":
        connect_args = (
            {"timeout": PG_CONNECT_TIMEOUT_S, "command_timeout": command_timeout_s}
            if parsed.get_backend_name() == "postgresql"
            else {}
        )
        return create_async_engine(url, **{"pool_pre_ping": True, "connect_args": connect_args, **pool, **options})
    path = parsed.database or ""
    named_by_path = path not in ("", ":memory:") and not path.startswith("file:")  # file:...: a URI
    if named_by_path:
        private_database_file(Path(path))
    engine = create_async_engine(
        url, **{"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}, **(pool if named_by_path else {}), **options}
    )
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def private_database_file(path: Path) -> None:
    """Create the database file (and its directory) readable by this user only, before SQLite
    would create it 0644: it holds every owner's canvases, inputs and outputs. SQLite gives
    its -wal and -shm files the database file's mode. An existing file is tightened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
    except FileExistsError:
        try:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        except PermissionError:  # not ours to change: whoever created it chose
            pass


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
