"""Node executions: what each node of a run received, returned and logged.

One row per node execution ``(node_id, path)`` of a run, written by the run's worker in the
same transaction as its journal (``flows.journal``) and read back, in start order and a page
at a time, by ``GET /api/executions/{id}/nodes``. A node execution restored when a run is
executed again (after a crash or a suspend) does not replace the one that really ran.

Kept as long as the run's record by default; ``FLOWMAESTRO_NODE_EXECUTION_RETENTION_DAYS``
has workers delete the ones recorded longer ago than that (``NodeExecutions.purge``).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from store.database import as_utc
from store.db import NodeExecutionRow, Sessions, utcnow
from store.errors import Invalid

PURGE_EVERY_S = 3600.0
"""How often a worker deletes node executions older than the retention, at most."""


@dataclass(frozen=True)
class NodeExecution:
    """One node execution of a run, as the API lists it."""

    node_id: str
    path: tuple[int, ...]
    type: str
    status: str
    attempts: int
    input: dict[str, Any] | None
    output: Any
    error: dict[str, Any] | None
    started_at: datetime
    ended_at: datetime | None
    duration_ms: int | None
    restored: bool = False
    logs: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "path": list(self.path),
            "type": self.type,
            "status": self.status,
            "attempts": self.attempts,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_ms": self.duration_ms,
            "restored": self.restored,
            "logs": list(self.logs),
        }


@dataclass(frozen=True)
class Page:
    items: list[NodeExecution]
    next_cursor: str | None


def _path_text(path: Sequence[int]) -> str:
    return ".".join(map(str, path))


def _path_of(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")) if text else ()


def encode_cursor(execution: NodeExecution) -> str:
    key = [execution.started_at.isoformat(), execution.node_id, _path_text(execution.path)]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    """The position a cursor stands for; ``Invalid`` naming the field for anything else."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        started, node_id, path = raw
        if not (isinstance(started, str) and isinstance(node_id, str) and isinstance(path, str)):
            raise ValueError("not a cursor")
        return as_utc(datetime.fromisoformat(started)), node_id, path
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise Invalid(
            "cursor: not a cursor of this list (take it from the Link header of the previous page)",
            [{"field": "cursor", "code": "invalid_cursor", "message": "not a cursor of this list"}],
        ) from None


class NodeExecutions:
    def __init__(self, sessions: Sessions, *, retention_days: float | None = None):
        self.sessions = sessions
        self.retention_days = retention_days
        self._purged_at = 0.0

    @staticmethod
    async def save_in(session: AsyncSession, execution_id: str, executions: Sequence[NodeExecution]) -> None:
        """Insert or replace, in the caller's transaction. A restored execution never
        replaces one that is there: that one ran, the restored one only read its outcome."""
        if not executions:
            return
        assert session.bind is not None  # the store's sessions are bound to its engine
        insert = postgresql_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
        now = utcnow()
        ran = [_values(execution_id, e, now) for e in executions if not e.restored]
        restored = [_values(execution_id, e, now) for e in executions if e.restored]
        if ran:
            statement = insert(NodeExecutionRow)
            columns = ("type", "status", "attempts", "input", "output", "error", "restored", "logs")
            more = ("started_at", "ended_at", "duration_ms", "recorded_at")
            statement = statement.on_conflict_do_update(
                index_elements=["execution_id", "node_id", "path"],
                set_={name: statement.excluded[name] for name in columns + more},
            )
            await session.execute(statement, ran)
        if restored:
            await session.execute(
                insert(NodeExecutionRow).on_conflict_do_nothing(index_elements=["execution_id", "node_id", "path"]),
                restored,
            )

    async def page(
        self,
        execution_id: str,
        *,
        node_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Node executions of a run in start order, ``limit`` at most, after ``cursor``."""
        query = select(NodeExecutionRow).where(NodeExecutionRow.execution_id == execution_id)
        if node_id:
            query = query.where(NodeExecutionRow.node_id == node_id)
        if status:
            query = query.where(NodeExecutionRow.status == status)
        if cursor:
            query = query.where(
                tuple_(NodeExecutionRow.started_at, NodeExecutionRow.node_id, NodeExecutionRow.path)
                > tuple_(*decode_cursor(cursor))
            )
        order = (NodeExecutionRow.started_at, NodeExecutionRow.node_id, NodeExecutionRow.path)
        async with self.sessions() as session:
            rows = list(await session.scalars(query.order_by(*order).limit(limit + 1)))
        items = [_execution(row) for row in rows[:limit]]
        return Page(items, encode_cursor(items[-1]) if len(rows) > limit and items else None)

    async def purge_due(self) -> int:
        """Delete the node executions recorded longer ago than the retention, at most once
        an hour per process; how many were deleted."""
        if self.retention_days is None or time.monotonic() - self._purged_at < PURGE_EVERY_S:
            return 0
        self._purged_at = time.monotonic()
        return await self.purge(self.retention_days)

    async def purge(self, older_than_days: float) -> int:
        cutoff = utcnow() - timedelta(days=older_than_days)
        async with self.sessions() as session:
            result = await session.execute(delete(NodeExecutionRow).where(NodeExecutionRow.recorded_at < cutoff))
            await session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


def _values(execution_id: str, e: NodeExecution, now: datetime) -> dict[str, Any]:
    return {
        "execution_id": execution_id,
        "node_id": e.node_id,
        "path": _path_text(e.path),
        "type": e.type,
        "status": e.status,
        "attempts": e.attempts,
        "input": e.input,
        "output": e.output,
        "error": e.error,
        "restored": e.restored,
        "logs": list(e.logs),
        "started_at": e.started_at,
        "ended_at": e.ended_at,
        "duration_ms": e.duration_ms,
        "recorded_at": now,
    }


def _execution(row: NodeExecutionRow) -> NodeExecution:
    return NodeExecution(
        node_id=row.node_id,
        path=_path_of(row.path),
        type=row.type,
        status=row.status,
        attempts=row.attempts,
        input=row.input,
        output=row.output,
        error=row.error,
        started_at=as_utc(row.started_at),
        ended_at=as_utc(row.ended_at) if row.ended_at else None,
        duration_ms=row.duration_ms,
        restored=row.restored,
        logs=tuple(row.logs or ()),
    )
