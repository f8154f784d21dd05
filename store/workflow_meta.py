"""A workflow's metadata (description, tags, status) and the workflows list with its filters.

Metadata changes make no version: a version is the canvas that runs, metadata is how people
find and govern it. ``status`` decides what may start a run (``refusal``):

- ``active`` (the default): anything;
- ``draft``: only a person (execute through the API, a retry); schedules and webhooks start
  nothing (its schedules are paused in Prefect, a webhook call is a 409);
- ``archived``: nothing (execute is a 409 too); its schedules are paused in Prefect.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from store import audit
from store.database import as_utc, utcnow
from store.db import Sessions, Workflow, WorkflowTag
from store.errors import Conflict, Invalid, NotFound
from store.pagination import Page, decode_cursor, keyset, page_of

WorkflowStatus = Literal["active", "draft", "archived"]
STATUSES: tuple[WorkflowStatus, ...] = ("active", "draft", "archived")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:/-]{0,63}$")
"""A tag (anchored: the API publishes it as a JSON Schema pattern, which matches anywhere otherwise)."""
MAX_TAGS = 20
MAX_DESCRIPTION = 2000

STARTED_BY_PEOPLE = frozenset({"api", "retry", "rerun", "test", "prefect-ui", "parent"})
"""Triggers a person is behind, reruns and node tests included (a parent run counts: its own
status was checked when it started)."""


def refusal(workflow_id: str, status: str, trigger_type: str) -> Conflict | None:
    """Why a run of a workflow in ``status`` may not start by ``trigger_type``, or None."""
    if status == "archived":
        return Conflict(
            f"workflow {workflow_id} is archived: nothing starts it; make it active first "
            f'(PATCH /api/workflows/{workflow_id} {{"status": "active"}})',
            [{"code": "workflow_archived", "field": "status", "message": "the workflow is archived"}],
        )
    if status == "draft" and trigger_type not in STARTED_BY_PEOPLE:
        return Conflict(
            f"workflow {workflow_id} is a draft: only executes by hand start it, not a {trigger_type}; "
            f'make it active first (PATCH /api/workflows/{workflow_id} {{"status": "active"}})',
            [{"code": "workflow_draft", "field": "status", "message": f"a draft is not started by a {trigger_type}"}],
        )
    return None


def checked_tags(tags: Sequence[str]) -> list[str]:
    """Tags as stored: each checked, duplicates dropped, order kept; ``Invalid`` names the tag."""
    if len(tags) > MAX_TAGS:
        raise Invalid(
            f"tags: at most {MAX_TAGS}",
            [{"code": "too_many_tags", "field": "tags", "message": f"at most {MAX_TAGS}"}],
        )
    kept: list[str] = []
    for index, tag in enumerate(tags):
        if not TAG.fullmatch(tag):
            raise Invalid(
                f"tags[{index}]: {tag!r} is not a tag (1 to 64 letters, digits, space, _ . : / -, "
                "starting with a letter or digit)",
                [{"code": "invalid_tag", "field": f"tags[{index}]", "message": f"{tag!r} is not a tag"}],
            )
        if tag not in kept:
            kept.append(tag)
    return kept


@dataclass(frozen=True)
class WorkflowMeta:
    id: str
    name: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    description: str
    tags: list[str]
    status: str


@dataclass(frozen=True)
class MetaChange:
    """A PATCH: what is None stays as it is."""

    description: str | None = None
    tags: list[str] | None = None
    status: WorkflowStatus | None = None
    paused_schedules: list[str] | None = None
    """With ``set_paused``: the schedules its status paused in Prefect (None: none now)."""
    set_paused: bool = False


async def tags_of(session: AsyncSession, workflow_ids: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {i: [] for i in workflow_ids}
    if workflow_ids:
        rows = await session.execute(
            select(WorkflowTag.workflow_id, WorkflowTag.tag)
            .where(WorkflowTag.workflow_id.in_(list(workflow_ids)))
            .order_by(WorkflowTag.workflow_id, WorkflowTag.tag)
        )
        for workflow_id, tag in rows:
            found[workflow_id].append(tag)
    return found


def _meta(row: Workflow, tags: list[str]) -> WorkflowMeta:
    return WorkflowMeta(
        row.id,
        row.name,
        row.latest_version,
        as_utc(row.created_at),
        as_utc(row.updated_at),
        row.description or "",
        tags,
        row.status or "active",
    )


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class WorkflowCatalog:
    """Reads and changes of workflows' metadata, scoped to their owner."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def get(self, owner: str, workflow_id: str) -> WorkflowMeta:
        async with self.sessions() as session:
            row = await _owned(session, owner, workflow_id)
            return _meta(row, (await tags_of(session, [row.id]))[row.id])

    async def page(
        self,
        owner: str,
        *,
        q: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[WorkflowMeta]:
        """The owner's workflows, oldest first (as they were made)."""
        query = select(Workflow).where(Workflow.owner == owner, Workflow.deleted_at.is_(None))
        if q:
            pattern = _like(q)
            query = query.where(
                or_(
                    func.lower(Workflow.name).like(pattern, escape="\\"),
                    func.lower(Workflow.description).like(pattern, escape="\\"),
                )
            )
        if tag:
            query = query.where(exists().where(WorkflowTag.workflow_id == Workflow.id, WorkflowTag.tag == tag))
        if status:
            query = query.where(Workflow.status == status)
        query = keyset(query, Workflow.created_at, Workflow.id, decode_cursor(cursor), limit, descending=False)
        async with self.sessions() as session:
            rows = list(await session.scalars(query))
            page = page_of(rows, limit, lambda r: (as_utc(r.created_at), r.id))
            tags = await tags_of(session, [r.id for r in page.items])
        return Page([_meta(r, tags[r.id]) for r in page.items], page.next_cursor)

    async def change(self, owner: str, workflow_id: str, change: MetaChange, *, actor: str) -> WorkflowMeta:
        """Apply a PATCH and record it in the audit log, in one transaction."""
        async with self.sessions() as session:
            row = await _owned(session, owner, workflow_id)
            before = {"description": row.description, "status": row.status}
            details: dict[str, Any] = {}
            if change.description is not None and change.description != row.description:
                row.description = change.description
                details["description"] = {"from": before["description"], "to": change.description}
            if change.status is not None and change.status != row.status:
                row.status = change.status
                details["status"] = {"from": before["status"], "to": change.status}
            if change.tags is not None:
                old = (await tags_of(session, [row.id]))[row.id]
                new = checked_tags(change.tags)
                if sorted(old) != sorted(new):
                    await session.execute(delete(WorkflowTag).where(WorkflowTag.workflow_id == row.id))
                    session.add_all([WorkflowTag(workflow_id=row.id, tag=t) for t in new])
                    details["tags"] = {"from": old, "to": sorted(new)}
            if change.set_paused:
                row.paused_schedules = change.paused_schedules
                if "status" in details:
                    details["schedules_paused"] = list(change.paused_schedules or [])
            if details:
                row.updated_at = utcnow()
                audit.record(
                    session,
                    owner=owner,
                    actor=actor,
                    action="workflow.update",
                    target_type="workflow",
                    target_id=row.id,
                    details=details,
                )
            await session.commit()
            return _meta(row, (await tags_of(session, [row.id]))[row.id])

    async def paused_schedules(self, owner: str, workflow_id: str) -> list[str]:
        async with self.sessions() as session:
            return list((await _owned(session, owner, workflow_id)).paused_schedules or [])


async def _owned(session: AsyncSession, owner: str, workflow_id: str) -> Workflow:
    row = await session.get(Workflow, workflow_id)
    if row is None or row.owner != owner or row.deleted_at is not None:
        raise NotFound(f"workflow {workflow_id} not found")
    return row
