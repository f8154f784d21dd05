"""The audit log: who did what to which object, appended and never changed.

``record`` adds an entry to the caller's session, so the entry commits or rolls back with the
change it records (one transaction). A change kept outside this database (a schedule, a
cancel or an approval decision, which Prefect keeps) is recorded by ``AuditLog.append`` right
after Prefect accepted it. Nothing here updates or deletes an entry: retention is the
operator's (docs/operations.md).

Actions (``target_type`` in brackets); other capabilities add theirs here:

- ``workflow.create`` (saved, imported or made from a template: ``details.via``),
  ``workflow.save`` (a new version), ``workflow.rollback`` (after the ``workflow.save`` of
  its new version), ``workflow.update`` (metadata), ``workflow.delete`` [workflow]
- ``execution.start`` (reruns and node tests too: ``details.trigger``), ``execution.cancel``,
  ``execution.retry``, ``execution.pause``, ``execution.resume`` [execution]
- ``approval.decide`` [execution] (the node, path and decision; never the form's values)
- ``credential.create``, ``credential.rotate``, ``credential.delete`` [credential] (names and
  fields, never values)
- ``schedule.create``, ``schedule.update``, ``schedule.delete`` [schedule]
- ``webhook.create``, ``webhook.rotate``, ``webhook.delete`` [webhook] (never the secret)
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from store.database import as_utc, utcnow
from store.db import AuditRow, Sessions
from store.pagination import Page, decode_cursor, keyset, page_of, utc

ACTIONS = frozenset(
    {
        "workflow.create",
        "workflow.save",
        "workflow.update",
        "workflow.delete",
        "workflow.rollback",
        "execution.start",
        "execution.cancel",
        "execution.retry",
        "execution.pause",
        "execution.resume",
        "approval.decide",
        "credential.create",
        "credential.rotate",
        "credential.delete",
        "schedule.create",
        "schedule.update",
        "schedule.delete",
        "webhook.create",
        "webhook.rotate",
        "webhook.delete",
    }
)
"""The actions written today; ``record`` refuses others so a typo cannot hide an entry from
the filter ``?action=``. Add new ones here (and to docs/api.md)."""

SECRET_KEYS = re.compile(r"secret|password|token|api_?key|authorization|value|data", re.IGNORECASE)
"""Detail keys never kept, whatever a caller passes: a second guard behind callers that pass
names and ids only."""


@dataclass(frozen=True)
class AuditEntry:
    id: str
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]


def scrubbed(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """``details`` without the keys that could hold a secret, at any depth."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items() if not SECRET_KEYS.search(str(k))}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    cleaned: dict[str, Any] = clean(dict(details or {}))
    return cleaned


def start_details(workflow_id: str, version: int, trigger: Mapping[str, Any]) -> dict[str, Any]:
    """The details of an ``execution.start`` entry: the workflow, its version, what started
    the run, and a rerun's source and node or a node test's node."""
    details = {"workflow_id": workflow_id, "version": version, "trigger": trigger.get("type", "api")}
    return details | {k: trigger[k] for k in ("execution_id", "from_node", "node_id") if k in trigger}


def record(
    session: AsyncSession,
    *,
    owner: str,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Add an entry to ``session``: it is written by the caller's commit, with its change."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: add it to store.audit.ACTIONS")
    session.add(
        AuditRow(
            id=str(uuid.uuid4()),
            at=utcnow(),
            owner=owner,
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            details=scrubbed(details),
        )
    )


async def recorded(session: AsyncSession, *, owner: str, action: str, target_id: str) -> bool:
    """Whether the log has an entry of ``action`` on ``target_id`` (an idempotent request
    replayed records nothing new)."""
    found = await session.scalar(
        select(AuditRow.id)
        .where(AuditRow.owner == owner, AuditRow.target_id == target_id, AuditRow.action == action)
        .limit(1)
    )
    return found is not None


class AuditLog:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def append(
        self,
        *,
        owner: str,
        actor: str,
        action: str,
        target_type: str,
        target_id: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """An entry in a transaction of its own: for changes kept by Prefect."""
        async with self.sessions() as session:
            record(
                session,
                owner=owner,
                actor=actor,
                action=action,
                target_type=target_type,
                target_id=target_id,
                details=details,
            )
            await session.commit()

    async def list(
        self,
        owner: str,
        *,
        action: str | None = None,
        target_id: str | None = None,
        since: datetime | None = None,
        limit: int,
        cursor: str | None = None,
    ) -> Page[AuditEntry]:
        """The owner's entries, newest first."""
        query = select(AuditRow).where(AuditRow.owner == owner)
        if action:
            query = query.where(AuditRow.action == action)
        if target_id:
            query = query.where(AuditRow.target_id == target_id)
        if since is not None:
            query = query.where(AuditRow.at >= utc(since))
        query = keyset(query, AuditRow.at, AuditRow.id, decode_cursor(cursor), limit)
        async with self.sessions() as session:
            rows = list(await session.scalars(query))
        page = page_of(rows, limit, lambda r: (as_utc(r.at), r.id))
        return Page([_entry(r) for r in page.items], page.next_cursor)


def _entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(row.id, as_utc(row.at), row.actor, row.action, row.target_type, row.target_id, row.details)
