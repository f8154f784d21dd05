"""``GET /health``: is each service the API needs answering? Every check runs at once, each
bounded by ``CHECK_TIMEOUT_S`` from its first byte (connecting included), so the endpoint
answers within that bound even when a service hangs, and names the one that does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

CHECK_TIMEOUT_S = 5.0
SQLITE_WARNING = (
    "Prefect runs on SQLite (the embedded default): fine to try FlowMaestro, not for production; a burst of "
    "concurrent runs makes it answer 'database is locked'. Set PREFECT_API_URL to a Prefect server on "
    "PostgreSQL (docs/operations.md)."
)


async def _database(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def _prefect(prefect: Any) -> None:
    answer = await prefect.api_healthcheck()  # returns the exception instead of raising it
    if answer is not None:
        raise answer


async def _check(call: Callable[[], Awaitable[Any]]) -> str:
    try:
        await asyncio.wait_for(call(), timeout=CHECK_TIMEOUT_S)
        return "ok"
    except TimeoutError:
        return f"unreachable: no answer within {CHECK_TIMEOUT_S:g} s"
    except Exception as exc:  # report, do not raise: this is the health endpoint
        return f"error: {type(exc).__name__}"


async def health_checks(engine: AsyncEngine, prefect: Any, redis: Any | None) -> dict[str, str]:
    """``{"database": "ok" | why not, "prefect": ..., "redis": ...}`` (redis when configured)."""
    checks: dict[str, Callable[[], Awaitable[Any]]] = {
        "database": lambda: _database(engine),
        "prefect": lambda: _prefect(prefect),
    }
    if redis is not None:
        checks["redis"] = redis.ping
    results = await asyncio.gather(*(_check(call) for call in checks.values()))
    return dict(zip(checks, results))


def prefect_database(home: Path) -> dict[str, Any]:
    """``{"prefect_database": "sqlite" | "postgresql" | "unknown"}``, with ``warnings`` when it
    is SQLite. Known for the embedded server (recorded when it started); a server of
    ``PREFECT_API_URL`` is ``unknown``: Prefect's API does not tell its database."""
    # Imported here: flows.local_server is for the CLI's processes; the API reads its state file only.
    from flows.local_server import embedded_database

    database = embedded_database(home, os.environ.get("PREFECT_API_URL"))
    found: dict[str, Any] = {"prefect_database": database or "unknown"}
    if database == "sqlite":
        found["warnings"] = [SQLITE_WARNING]
    return found
