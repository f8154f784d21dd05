"""A workflow's history and what is made from it: its versions as a list, owners' own
templates, and several workflows with all their versions created in one transaction (an
import, a template with the workflows it runs), so that a failure leaves none of them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from store import audit
from store.database import as_utc
from store.db import Base, Sessions, Workflow, WorkflowTag, WorkflowVersion, utcnow
from store.errors import Conflict, NotFound
from store.workflow_meta import checked_tags


class TemplateRow(Base):
    """A template an owner saved from a version of one of their workflows (the bundled
    library is package data, ``api/workflow_templates``, not rows)."""

    __tablename__ = "workflow_templates"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    category: Mapped[str] = mapped_column(String(64), index=True)
    canvas: Mapped[dict[str, Any]] = mapped_column(JSON)
    source_workflow_id: Mapped[str] = mapped_column(String(36))
    source_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


@dataclass(frozen=True)
class OwnerTemplate:
    id: str
    owner: str
    name: str
    description: str
    category: str
    canvas: dict[str, Any]
    source_workflow_id: str
    source_version: int
    created_at: datetime


@dataclass(frozen=True)
class VersionRecord:
    """One saved version of a workflow, with its canvas."""

    version: int
    created_at: datetime
    plan_hash: str
    canvas: dict[str, Any]


@dataclass(frozen=True)
class NewVersion:
    canvas: dict[str, Any]
    plan_hash: str
    created_at: datetime | None = None
    """Kept from the bundle an import reads; now when None."""


@dataclass(frozen=True)
class NewWorkflow:
    """A workflow to create with its versions, numbered 1, 2, ... in order."""

    name: str
    versions: tuple[NewVersion, ...]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    description: str = ""
    tags: tuple[str, ...] = ()


def _template(row: TemplateRow) -> OwnerTemplate:
    return OwnerTemplate(
        row.id,
        row.owner,
        row.name,
        row.description,
        row.category,
        row.canvas,
        row.source_workflow_id,
        row.source_version,
        as_utc(row.created_at),
    )


class OwnerTemplates:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def create(
        self,
        owner: str,
        *,
        name: str,
        description: str,
        category: str,
        canvas: dict[str, Any],
        workflow_id: str,
        version: int,
    ) -> OwnerTemplate:
        row = TemplateRow(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            description=description,
            category=category,
            canvas=canvas,
            source_workflow_id=workflow_id,
            source_version=version,
            created_at=utcnow(),
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return _template(row)

    async def list(self, owner: str, *, category: str | None = None, q: str | None = None) -> list[OwnerTemplate]:
        query = select(TemplateRow).where(TemplateRow.owner == owner)
        if category:
            query = query.where(TemplateRow.category == category)
        if q:
            pattern = f"%{q.lower()}%"
            query = query.where(
                or_(func.lower(TemplateRow.name).like(pattern), func.lower(TemplateRow.description).like(pattern))
            )
        async with self.sessions() as session:
            return [_template(r) for r in await session.scalars(query.order_by(TemplateRow.created_at))]

    async def get(self, owner: str, template_id: str) -> OwnerTemplate:
        async with self.sessions() as session:
            row = await session.get(TemplateRow, template_id)
        if row is None or row.owner != owner:
            raise NotFound(f"template {template_id} not found")
        return _template(row)


class WorkflowHistory:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def versions(self, owner: str, workflow_id: str) -> list[VersionRecord]:
        """Every version of a workflow of ``owner``, oldest first."""
        async with self.sessions() as session:
            workflow = await session.get(Workflow, workflow_id)
            if workflow is None or workflow.owner != owner or workflow.deleted_at is not None:
                raise NotFound(f"workflow {workflow_id} not found")
            rows = await session.scalars(
                select(WorkflowVersion)
                .where(WorkflowVersion.workflow_id == workflow_id)
                .order_by(WorkflowVersion.version)
            )
            return [VersionRecord(r.version, as_utc(r.created_at), r.plan_hash, r.canvas) for r in rows]

    async def create_all(self, owner: str, workflows: Sequence[NewWorkflow], *, via: str = "import") -> None:
        """Create ``workflows`` with their versions in one transaction: all or none, their
        audit entries (``workflow.create``, ``details.via``) with them. A name the owner
        already uses (or used twice here) is a 409 naming it, before anything is written."""
        names = [w.name for w in workflows]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise _name_conflict(twice, "is given to several workflows of the bundle")
        async with self.sessions() as session:
            taken = list(
                await session.scalars(
                    select(Workflow.name).where(
                        Workflow.owner == owner, Workflow.deleted_at.is_(None), Workflow.name.in_(names)
                    )
                )
            )
            if taken:
                raise _name_conflict(sorted(taken), "is the name of one of your workflows already")
            now = utcnow()
            try:
                for new in workflows:
                    session.add(
                        Workflow(
                            id=new.id,
                            owner=owner,
                            name=new.name,
                            description=new.description,
                            latest_version=len(new.versions),
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    audit.record(
                        session,
                        owner=owner,
                        actor=owner,
                        action="workflow.create",
                        target_type="workflow",
                        target_id=new.id,
                        details={"name": new.name, "versions": len(new.versions), "via": via},
                    )
                await session.flush()  # the workflows before their versions (PostgreSQL checks the key at once)
                for new in workflows:
                    session.add_all([WorkflowTag(workflow_id=new.id, tag=tag) for tag in checked_tags(new.tags)])
                for new in workflows:
                    for number, version in enumerate(new.versions, start=1):
                        session.add(
                            WorkflowVersion(
                                workflow_id=new.id,
                                version=number,
                                canvas=version.canvas,
                                plan_hash=version.plan_hash,
                                created_at=version.created_at or now,
                            )
                        )
                await session.commit()
            except IntegrityError as exc:  # another request took a name (or an id) meanwhile: none is made
                await session.rollback()
                raise _name_conflict(names, "may be taken: another save raced this one") from exc


def _name_conflict(names: Sequence[str], why: str) -> Conflict:
    return Conflict(
        f"workflow name {', '.join(map(repr, names))} {why}",
        [{"code": "name_taken", "field": "name", "message": f"{name!r} {why}; give another name"} for name in names],
    )
