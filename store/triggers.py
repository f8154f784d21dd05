"""Queries on what starts workflows by themselves: webhooks, their idempotent deliveries,
and the overlap policies of schedules (the schedules themselves are Prefect's).

Everything read on behalf of an owner is filtered by that owner here, like
``store.queries``; the one exception is ``Webhooks.for_delivery``, for the unauthenticated
intake, which proves who it is with the signature instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import audit
from store.database import as_utc
from store.db import ScheduleOverlap, Sessions, WebhookDelivery, WebhookRow, utcnow
from store.errors import NotFound
from store.secrets import SecretBox


@dataclass(frozen=True)
class Webhook:
    """A webhook as the rest of the system sees it; ``secret`` only where it is needed."""

    id: str
    owner: str
    workflow_id: str
    name: str
    created_at: datetime
    rotated_at: datetime | None = None
    secret: str | None = None
    verification: Mapping[str, Any] | None = None
    """The verification scheme and its options as stored; None: ours."""
    inputs_map: Mapping[str, Any] | None = None
    """How a request becomes inputs as stored; None: the JSON body is the inputs."""

    @property
    def url(self) -> str:
        return f"/hooks/{self.id}"


def _webhook(row: WebhookRow, secret: str | None = None) -> Webhook:
    return Webhook(
        row.id,
        row.owner,
        row.workflow_id,
        row.name,
        row.created_at,
        row.rotated_at,
        secret,
        verification=row.verification,
        inputs_map=row.inputs_map,
    )


def _audit(session: AsyncSession, actor: str | None, action: str, row: WebhookRow) -> None:
    if actor is not None:
        audit.record(
            session,
            owner=row.owner,
            actor=actor,
            action=action,
            target_type="webhook",
            target_id=row.id,
            details={"workflow_id": row.workflow_id, "name": row.name},
        )


class Webhooks:
    def __init__(self, sessions: Sessions, box: SecretBox):
        self.sessions, self.box = sessions, box

    async def create(
        self,
        owner: str,
        workflow_id: str,
        name: str,
        secret: str,
        verification: dict[str, Any] | None = None,
        inputs_map: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
    ) -> Webhook:
        """``actor``: who made it, recorded in the audit log (never the secret) with it."""
        row = WebhookRow(
            id=str(uuid.uuid4()),
            owner=owner,
            workflow_id=workflow_id,
            name=name,
            secret_encrypted=self.box.seal(secret),
            created_at=utcnow(),
            verification=verification,
            inputs_map=inputs_map,
        )
        async with self.sessions() as session:
            session.add(row)
            _audit(session, actor, "webhook.create", row)
            await session.commit()
        return _webhook(row, secret)

    async def list(self, owner: str, workflow_id: str) -> list[Webhook]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(WebhookRow)
                .where(WebhookRow.owner == owner, WebhookRow.workflow_id == workflow_id)
                .order_by(WebhookRow.created_at)
            )
            return [_webhook(r) for r in rows]

    async def rotate(
        self, owner: str, workflow_id: str, hook_id: str, secret: str, *, actor: str | None = None
    ) -> Webhook:
        async with self.sessions() as session:
            row = await _owned(session, owner, workflow_id, hook_id)
            row.secret_encrypted, row.rotated_at = self.box.seal(secret), utcnow()
            _audit(session, actor, "webhook.rotate", row)
            await session.commit()
            return _webhook(row, secret)

    async def delete(self, owner: str, workflow_id: str, hook_id: str, *, actor: str | None = None) -> None:
        async with self.sessions() as session:
            row = await _owned(session, owner, workflow_id, hook_id)
            _audit(session, actor, "webhook.delete", row)
            await session.delete(row)
            await session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id))
            await session.commit()

    async def for_delivery(self, hook_id: str) -> Webhook:
        """The webhook with its secret, for checking a request's signature."""
        async with self.sessions() as session:
            row = await session.get(WebhookRow, hook_id)
        if row is None:
            raise NotFound(f"webhook {hook_id} not found")
        return _webhook(row, self.box.open(row.secret_encrypted))

    async def delivered(self, hook_id: str, key: str, within: timedelta) -> str | None:
        """The run a request with this key started within ``within``, if any."""
        async with self.sessions() as session:
            row = await session.get(WebhookDelivery, (hook_id, key))
        if row is None or as_utc(row.created_at) < utcnow() - within:
            return None
        return row.execution_id

    async def record_delivery(self, hook_id: str, key: str, execution_id: str) -> str:
        """Remember the run; answers the run recorded first when two requests raced."""
        async with self.sessions() as session:
            row = await session.get(WebhookDelivery, (hook_id, key))
            if row is None:
                session.add(
                    WebhookDelivery(
                        webhook_id=hook_id, idempotency_key=key, execution_id=execution_id, created_at=utcnow()
                    )
                )
            else:  # an expired one: the key starts a new run
                row.execution_id, row.created_at = execution_id, utcnow()
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                found = await session.get(WebhookDelivery, (hook_id, key))
                return found.execution_id if found else execution_id
        return execution_id


async def _owned(session: AsyncSession, owner: str, workflow_id: str, hook_id: str) -> WebhookRow:
    row = await session.get(WebhookRow, hook_id)
    if row is None or row.owner != owner or row.workflow_id != workflow_id:
        raise NotFound(f"webhook {hook_id} not found")
    return row


class ScheduleOverlaps:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def set(self, owner: str, workflow_id: str, schedule_id: str, overlap: str) -> None:
        async with self.sessions() as session:
            row = await session.get(ScheduleOverlap, schedule_id)
            if row is None:
                session.add(
                    ScheduleOverlap(
                        schedule_id=schedule_id,
                        owner=owner,
                        workflow_id=workflow_id,
                        overlap=overlap,
                        created_at=utcnow(),
                    )
                )
            elif row.owner == owner:
                row.overlap = overlap
            await session.commit()

    async def of_workflow(self, owner: str, workflow_id: str) -> dict[str, str]:
        """Schedule id -> policy; schedules made in the Prefect UI have none (``allow``)."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(ScheduleOverlap).where(
                    ScheduleOverlap.owner == owner, ScheduleOverlap.workflow_id == workflow_id
                )
            )
            return {r.schedule_id: r.overlap for r in rows}

    async def forget(self, owner: str, schedule_ids: list[str]) -> None:
        if not schedule_ids:
            return
        async with self.sessions() as session:
            await session.execute(
                delete(ScheduleOverlap).where(
                    ScheduleOverlap.owner == owner, ScheduleOverlap.schedule_id.in_(schedule_ids)
                )
            )
            await session.commit()
