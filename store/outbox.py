"""Runs the API accepted whose Prefect flow run is not created yet: an outbox in front of
``create_flow_run`` (``api.outbox`` drains it).

An accepted run is its executions row, ``pending`` with no ``flow_run_id``, carrying what
creating its flow run takes. Drainers claim rows with a lease (``create_after``): on
PostgreSQL with ``FOR UPDATE SKIP LOCKED`` so several API processes share the rows, on
SQLite (one process) the same query without the lock clause. A claim that is not released
(its API died) expires and another drainer takes the row: creating it twice is harmless,
the flow run's idempotency key is the execution id's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from store import audit
from store.db import ExecutionRow, Sessions, utcnow
from store.errors import NotFound

AWAITING = (ExecutionRow.flow_run_id.is_(None), ExecutionRow.status == "pending")
"""The rows of runs accepted and not created yet (a run cancelled meanwhile is not)."""


@dataclass(frozen=True)
class Accepted:
    """A run accepted: its execution id, and whether this request recorded it (False: an
    earlier request with the same idempotency key did, with ``inputs`` and ``version``)."""

    execution_id: str
    new: bool
    inputs: dict[str, Any]
    version: int


@dataclass(frozen=True)
class Unsent:
    """A claimed row: what creating its flow run takes."""

    execution_id: str
    owner: str
    workflow_id: str
    workflow_name: str
    version: int
    inputs: dict[str, Any]
    trigger: dict[str, Any]
    request: dict[str, Any]
    attempts: int


class RunOutbox:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def accept(
        self,
        *,
        execution_id: str,
        owner: str,
        workflow_id: str,
        version: int,
        workflow_name: str,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        request: dict[str, Any],
        idempotency_key: str | None,
        actor: str | None,
    ) -> Accepted:
        """Record the run, with its audit entry, in one transaction. A key already used
        answers the run it accepted first (nothing recorded)."""
        async with self.sessions() as session:
            session.add(
                ExecutionRow(
                    id=execution_id,
                    owner=owner,
                    workflow_id=workflow_id,
                    version=version,
                    workflow_name=workflow_name,
                    status="pending",
                    inputs=inputs,
                    trigger_type=str(trigger.get("type", "api")),
                    trigger=trigger,
                    start_request=request,
                    idempotency_key=idempotency_key,
                    create_after=utcnow(),
                    create_attempts=0,
                )
            )
            if actor is not None:
                audit.record(
                    session,
                    owner=owner,
                    actor=actor,
                    action="execution.start",
                    target_type="execution",
                    target_id=execution_id,
                    details=audit.start_details(workflow_id, version, trigger),
                )
            try:
                await session.commit()
                return Accepted(execution_id, True, inputs, version)
            except IntegrityError:
                if idempotency_key is None:
                    raise
                await session.rollback()
        async with self.sessions() as session:
            row = await session.scalar(select(ExecutionRow).where(ExecutionRow.idempotency_key == idempotency_key))
        if row is None:  # pragma: no cover - the row that conflicted was deleted since
            raise NotFound("the run this Idempotency-Key started is gone; send a new key")
        return Accepted(row.id, False, row.inputs, row.version)

    async def awaiting(self) -> int:
        """How many accepted runs have no flow run yet (every API process's)."""
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ExecutionRow).where(*AWAITING)) or 0)

    async def claim(self, limit: int, lease_s: float) -> list[Unsent]:
        """Up to ``limit`` rows due, oldest first, leased to the caller for ``lease_s``."""
        now = utcnow()
        async with self.sessions() as session:
            query = (
                select(ExecutionRow)
                .where(*AWAITING, or_(ExecutionRow.create_after.is_(None), ExecutionRow.create_after <= now))
                .order_by(ExecutionRow.created_at)
                .limit(limit)
                .with_for_update(skip_locked=True)  # SQLite: no clause (one process drains it)
            )
            rows = list(await session.scalars(query))
            for row in rows:
                row.create_after = now + timedelta(seconds=lease_s)
                row.create_attempts = (row.create_attempts or 0) + 1
            await session.commit()
            return [
                Unsent(
                    r.id,
                    r.owner,
                    r.workflow_id,
                    r.workflow_name,
                    r.version,
                    r.inputs,
                    r.trigger or {"type": r.trigger_type},
                    r.start_request or {},
                    r.create_attempts,
                )
                for r in rows
            ]

    async def created(self, execution_id: str, flow_run_id: str) -> None:
        """Record its flow run, unless the run ended meanwhile (cancelled through the API):
        then that flow run is left to the worker that takes it, which refuses it and
        records it then (``Executions.record_start``), in one statement against a retry's
        (``Executions.reopen``). Cancelling it in Prefect from here could land after a
        retry made the run pending again, and the retried run would never execute."""
        async with self.sessions() as session:
            await session.execute(
                update(ExecutionRow)
                .where(*AWAITING, ExecutionRow.id == execution_id)
                .values(flow_run_id=flow_run_id, create_after=None, updated_at=utcnow())
            )
            await session.commit()

    async def retry_later(self, execution_id: str, delay_s: float) -> None:
        async with self.sessions() as session:
            await session.execute(
                update(ExecutionRow)
                .where(ExecutionRow.id == execution_id, ExecutionRow.flow_run_id.is_(None))
                .values(create_after=utcnow() + timedelta(seconds=delay_s))
            )
            await session.commit()

    async def cancel_unsent(self, execution_id: str, result: dict[str, Any]) -> bool:
        """Cancel a run whose flow run is not created yet: no drainer creates it from now
        on. False when its flow run exists (the caller cancels that instead)."""
        async with self.sessions() as session:
            changed = await session.execute(
                update(ExecutionRow)
                .where(ExecutionRow.id == execution_id, *AWAITING)
                .values(status="cancelled", result=result, updated_at=utcnow(), create_after=None)
            )
            await session.commit()
            return bool(getattr(changed, "rowcount", 0))
