"""``GET /health``: is each service the API needs answering? Every check runs at once, each
bounded by ``CHECK_TIMEOUT_S`` from its first byte (connecting included), so the endpoint
answers within that bound even when a service hangs, and names the one that does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
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


LIVE_HEARTBEATS_MISSED = 3
"""A worker whose last heartbeat is older than this many of its intervals is not live, even
before Prefect's server marks it offline."""


def live_workers(workers: list[Any], now: datetime) -> list[Any]:
    """The workers Prefect sees online whose heartbeat is recent."""
    live = []
    for worker in workers:
        if str(getattr(worker.status, "value", worker.status)).upper() != "ONLINE":
            continue
        beat, interval = worker.last_heartbeat_time, worker.heartbeat_interval_seconds or 30
        if beat is not None and (now - beat).total_seconds() > LIVE_HEARTBEATS_MISSED * interval:
            continue
        live.append(worker)
    return live


async def pool_health(prefect: Any, pools: list[str]) -> dict[str, dict[str, Any]]:
    """For each work pool the API sends runs to: how many live workers poll it, and when none
    does, that a run sent there waits until one starts. Never raises: Prefect unreachable is
    said as such (the ``prefect`` check names it too)."""

    async def one(pool: str) -> dict[str, Any]:
        try:
            workers = await asyncio.wait_for(
                prefect.read_workers_for_work_pool(work_pool_name=pool), timeout=CHECK_TIMEOUT_S
            )
        except (ObjectNotFound, PrefectHTTPStatusError) as exc:
            if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
                return {"status": f"unknown: Prefect answered {exc.response.status_code} reading its workers"}
            workers = []  # created by the first save or worker: none has polled it yet
        except Exception as exc:  # report, do not raise: this is the health endpoint
            return {"status": f"unknown: {type(exc).__name__} reading its workers from Prefect"}
        live = len(live_workers(workers, datetime.now(UTC)))
        if live:
            return {"status": "ok", "live_workers": live}
        return {"status": "no live worker: runs sent to this pool wait until a worker polls it", "live_workers": 0}

    results = await asyncio.gather(*(one(pool) for pool in pools))
    return dict(zip(pools, results))
