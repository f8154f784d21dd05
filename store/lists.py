"""Pages of the runs and dead letters lists (``store.pagination``), newest first, owner-scoped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from store.database import as_utc
from store.db import ExecutionRow, NodeOutcomeRow, Sessions
from store.pagination import Page, decode_cursor, keyset, page_of, utc
from store.queries import FINAL_STATUSES, DeadLetter, _dead_letter
from store.vocabulary import RunStatus


@dataclass(frozen=True)
class ExecutionFilter:
    """``status``: a final one selects it; any other selects every run not ended yet (their
    stored status may be behind Prefect's: the caller refreshes and filters them).
    ``since`` (inclusive) and ``until`` (exclusive) bound the creation time."""

    workflow_id: str | None = None
    status: str | None = None
    trigger: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def executions_page(
    sessions: Sessions, owner: str, where: ExecutionFilter, *, limit: int, cursor: str | None = None
) -> Page[ExecutionRow]:
    query = select(ExecutionRow).where(ExecutionRow.owner == owner)
    if where.workflow_id:
        query = query.where(ExecutionRow.workflow_id == where.workflow_id)
    if where.status in FINAL_STATUSES:
        query = query.where(ExecutionRow.status == where.status)
    elif where.status is not None:
        # IN the statuses not final rather than NOT IN the final ones: an index range each.
        query = query.where(ExecutionRow.status.in_([s for s in RunStatus if s not in FINAL_STATUSES]))
    if where.trigger:
        query = query.where(ExecutionRow.trigger_type == where.trigger)
    if where.since is not None:
        query = query.where(ExecutionRow.created_at >= utc(where.since))
    if where.until is not None:
        query = query.where(ExecutionRow.created_at < utc(where.until))
    query = keyset(query, ExecutionRow.created_at, ExecutionRow.id, decode_cursor(cursor), limit)
    async with sessions() as session:
        rows = list(await session.scalars(query))
    return page_of(rows, limit, lambda row: (as_utc(row.created_at), row.id))


async def dead_letters_page(
    sessions: Sessions, owner: str, *, workflow_id: str | None = None, limit: int, cursor: str | None = None
) -> Page[DeadLetter]:
    query = select(NodeOutcomeRow).where(NodeOutcomeRow.owner == owner, NodeOutcomeRow.dead_letter.is_(True))
    if workflow_id:
        query = query.where(NodeOutcomeRow.workflow_id == workflow_id)
    query = keyset(query, NodeOutcomeRow.ended_at, NodeOutcomeRow.id, decode_cursor(cursor), limit)
    async with sessions() as session:
        rows = list(await session.scalars(query))
    page = page_of(rows, limit, lambda row: (as_utc(row.ended_at), row.id))
    return Page([_dead_letter(row) for row in page.items], page.next_cursor)
