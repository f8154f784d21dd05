"""The database's failures that mean it is down, raised as ``Unavailable("database")`` where the
store does its I/O (``store.db.sessions``, the SQL event log), so nothing above the store has
to guess from an exception which service failed.

Down means: a connection refused, reset or timed out, a server starting up, shutting down or
crashed, a pool with no connection to give in time. Anything else (a constraint, a bad query)
is raised as it is: a conflict the caller handles, or a bug."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg.exceptions
import sqlalchemy.exc

from store.errors import Unavailable

RETRY_AFTER_S = 5

_ASYNCPG_DOWN = (
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, crashed
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
)
"""asyncpg errors that SQLAlchemy lets through unwrapped while connecting."""
_DOWN = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    *_ASYNCPG_DOWN,
    OSError,
)  # a socket error the driver did not wrap (refused, reset; TimeoutError is one too)


def database_down(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a database call, means the database is down or too slow."""
    return isinstance(exc, _DOWN) or (isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated)


def database_unavailable(exc: BaseException) -> Unavailable:
    return Unavailable("database", f"the database is unavailable ({type(exc).__name__}); retry later", RETRY_AFTER_S)


@asynccontextmanager
async def database_calls() -> AsyncIterator[None]:
    """Around database I/O: a failure that means the database is down becomes ``Unavailable``."""
    try:
        yield
    except Exception as exc:
        if not database_down(exc):
            raise
        raise database_unavailable(exc) from exc
