"""Which service an unexpected exception says is down: the database or Redis.

Prefect calls are bounded and mapped where they are made (``RunService._call``). The store and
Redis are used in many places, so their failures are recognised here, once, when they reach
the error handler: a connection refused, reset or timed out, a server that is starting up or
shutting down, a pool with no connection to give. Anything else stays a 500 (a bug)."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import asyncpg.exceptions
import redis.exceptions
import sqlalchemy.exc

from flows.event_log import RedisEventLog
from store.errors import Unavailable

RETRY_AFTER_S = 5
ASYNCPG_DOWN = (asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, crashed
                asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.exceptions.InterfaceError)
"""asyncpg errors that SQLAlchemy lets through unwrapped while connecting."""
ERROR_TYPES = (sqlalchemy.exc.DBAPIError, sqlalchemy.exc.TimeoutError, redis.exceptions.RedisError, OSError,
               asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError)
"""What the API's error handlers pass to ``service_down`` (asyncio.TimeoutError is an OSError)."""

_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "store.", "flows.event_log.sql")
_REDIS_MODULES = ("redis", "flows.event_log.redis_streams", "api.rate_limit")


def _raised_in(exc: BaseException) -> str | None:
    """The service whose client code raised ``exc`` (the innermost frame that says)."""
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        module = frame.f_globals.get("__name__", "")
        if module.startswith(_REDIS_MODULES):
            return "redis"
        if module.startswith(_DATABASE_MODULES):
            return "database"
    return None


def service_down(exc: BaseException) -> Unavailable | None:
    """An ``Unavailable`` naming the service when ``exc`` means it is down or too slow."""
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.BusyLoadingError)):
        service = "redis"
    elif isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                          sqlalchemy.exc.TimeoutError, *ASYNCPG_DOWN)) or (
            isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated):
        service = "database"
    elif isinstance(exc, (OSError, asyncio.TimeoutError)):  # a socket error the client did not wrap
        service = _raised_in(exc)
        if service is None:
            return None
    else:
        return None
    what = "the database" if service == "database" else "Redis"
    return Unavailable(service, f"{what} is unavailable ({type(exc).__name__}); retry later", RETRY_AFTER_S)


async def probe_event_log(log: Any, execution_id: str) -> None:
    """Raise ``Unavailable`` naming the event log's service when it does not answer in time."""
    service = "redis" if isinstance(log, RedisEventLog) else "database"
    try:
        await asyncio.wait_for(log.last_seq(execution_id), timeout=RETRY_AFTER_S)
    except asyncio.TimeoutError:
        raise Unavailable(service, f"the event log ({service}) did not answer in time; could not stream the run",
                          RETRY_AFTER_S) from None
