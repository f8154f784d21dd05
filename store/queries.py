"""Every query on FlowMaestro's records, in one place; everything a caller reads on
behalf of an owner is filtered by that owner here, so no route can forget it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.db import ExecutionRow, Workflow, WorkflowVersion, utcnow
from store.errors import Conflict, NotFound

FINAL_STATUSES = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class SavedVersion:
    """A workflow version as the rest of the system sees it (no ORM object escapes)."""

    workflow_id: str
    owner: str
    name: str
    version: int
    latest_version: int
    canvas: dict[str, Any]
    plan_hash: str


class Workflows:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def get(self, owner: str, workflow_id: str) -> Workflow:
        async with self.sessions() as session:
            return await _workflow(session, owner, workflow_id)

    async def version(self, owner: str, workflow_id: str, version: int | None = None) -> SavedVersion:
        """A version of a workflow of ``owner`` (the latest when ``version`` is None)."""
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            found = await session.get(WorkflowVersion, (workflow.id, version or workflow.latest_version))
        if found is None:
            raise NotFound(f"workflow {workflow_id} has no version {version}")
        return SavedVersion(workflow.id, workflow.owner, workflow.name, found.version, workflow.latest_version,
                            found.canvas, found.plan_hash)

    async def list(self, owner: str) -> Sequence[Workflow]:
        async with self.sessions() as session:
            rows = await session.scalars(select(Workflow).where(Workflow.owner == owner, Workflow.deleted_at.is_(None))
                                         .order_by(Workflow.created_at))
            return list(rows)

    async def create(self, owner: str, name: str, canvas: dict[str, Any], plan_hash: str) -> SavedVersion:
        workflow = Workflow(id=str(uuid.uuid4()), owner=owner, name=name, latest_version=1)
        async with self.sessions() as session:
            session.add(workflow)
            session.add(WorkflowVersion(workflow_id=workflow.id, version=1, canvas=canvas, plan_hash=plan_hash))
            await _commit_or_conflict(session, name)
        return SavedVersion(workflow.id, owner, name, 1, 1, canvas, plan_hash)

    async def add_version(self, owner: str, workflow_id: str, name: str, canvas: dict[str, Any],
                          plan_hash: str) -> SavedVersion:
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            workflow.latest_version += 1
            workflow.name, workflow.updated_at = name, utcnow()
            session.add(WorkflowVersion(workflow_id=workflow.id, version=workflow.latest_version, canvas=canvas,
                                        plan_hash=plan_hash))
            await _commit_or_conflict(session, name)
            return SavedVersion(workflow.id, owner, name, workflow.latest_version, workflow.latest_version, canvas,
                                plan_hash)

    async def delete(self, owner: str, workflow_id: str) -> None:
        """Mark deleted: versions and runs stay readable for history."""
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            workflow.deleted_at = utcnow()
            await session.commit()


class Executions:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def get(self, owner: str, execution_id: str) -> ExecutionRow:
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
        if row is None or row.owner != owner:
            raise NotFound(f"execution {execution_id} not found")
        return row

    async def list(self, owner: str, *, workflow_id: str | None = None, status: str | None = None,
                   trigger: str | None = None, limit: int = 500) -> list[ExecutionRow]:
        query = select(ExecutionRow).where(ExecutionRow.owner == owner)
        if workflow_id:
            query = query.where(ExecutionRow.workflow_id == workflow_id)
        if status in FINAL_STATUSES:
            query = query.where(ExecutionRow.status == status)
        if trigger:
            query = query.where(ExecutionRow.trigger_type == trigger)
        query = query.order_by(ExecutionRow.created_at.desc()).limit(limit)
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def record_start(self, *, execution_id: str, owner: str, workflow_id: str, version: int,
                           workflow_name: str, inputs: dict[str, Any], trigger: dict[str, Any],
                           status: str = "pending") -> None:
        """Create the row of a run; a worker starting a run that has one (registered by the
        API, or a run executed again) marks it running and clears the old result."""
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
            if row is None:
                session.add(ExecutionRow(id=execution_id, owner=owner, workflow_id=workflow_id, version=version,
                                         workflow_name=workflow_name, status=status, inputs=inputs,
                                         trigger_type=str(trigger.get("type", "api")), trigger=trigger))
            elif status != "pending":  # a worker (re)starting it; an API retry changes nothing
                row.version, row.status, row.updated_at, row.result = version, status, utcnow(), None
            try:
                await session.commit()
            except IntegrityError:  # the API and the worker raced to create it: it exists now
                await session.rollback()
                await self.set_status(execution_id, status)

    async def set_status(self, execution_id: str, status: str) -> None:
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
            if row is not None and row.status not in FINAL_STATUSES:
                row.status, row.updated_at = status, utcnow()
                await session.commit()

    async def record_result(self, execution_id: str, result: dict[str, Any]) -> None:
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
            if row is not None:
                row.status, row.result, row.updated_at = str(result.get("status", "failed")), result, utcnow()
                await session.commit()


async def _workflow(session: AsyncSession, owner: str, workflow_id: str) -> Workflow:
    workflow = await session.get(Workflow, workflow_id)
    if workflow is None or workflow.owner != owner or workflow.deleted_at is not None:
        raise NotFound(f"workflow {workflow_id} not found")
    return workflow


async def _commit_or_conflict(session: AsyncSession, name: str) -> None:
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"a workflow named {name!r} already exists") from exc
