"""Every query on FlowMaestro's records, in one place; everything a caller reads on
behalf of an owner is filtered by that owner here, so no route can forget it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import audit
from store.database import as_utc
from store.db import ExecutionRow, LargeOutputRow, NodeOutcomeRow, Sessions, Workflow, WorkflowVersion, utcnow
from store.errors import Conflict, NotFound
from store.node_executions import NodeExecution, NodeExecutions
from store.vocabulary import FINAL_RUN_STATUSES

FINAL_STATUSES = FINAL_RUN_STATUSES  # a run that has ended: its row's status and result stay


def _ended_without_flow_run(execution_id: str) -> tuple[Any, ...]:
    """The run, when the API ended it before it knew of a flow run of it (cancelled, or failed
    for want of one): what a retry (back to the outbox) and a worker's refusal of a late flow
    run each claim in one statement, so that exactly one of them wins."""
    return (
        ExecutionRow.id == execution_id,
        ExecutionRow.flow_run_id.is_(None),
        ExecutionRow.status.in_(FINAL_STATUSES),
    )


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
    status: str = "active"
    """The workflow's status (``store.workflow_meta``): what may start its runs."""


class Workflows:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def get(self, owner: str, workflow_id: str) -> Workflow:
        async with self.sessions() as session:
            return await _workflow(session, owner, workflow_id)

    async def version(self, owner: str, workflow_id: str, version: int | None = None) -> SavedVersion:
        """A version of a workflow of ``owner`` (the latest when ``version`` is None)."""
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            # Versions are 1..latest: a number beyond is not asked of the database (one too
            # large for its integers would be an error there, not a 404).
            beyond = version is not None and not 1 <= version <= workflow.latest_version
            found = (
                None
                if beyond
                else await session.get(WorkflowVersion, (workflow.id, version or workflow.latest_version))
            )
        if found is None:
            raise NotFound(f"workflow {workflow_id} has no version {version}")
        return SavedVersion(
            workflow.id,
            workflow.owner,
            workflow.name,
            found.version,
            workflow.latest_version,
            found.canvas,
            found.plan_hash,
            workflow.status or "active",
        )

    async def list(self, owner: str) -> Sequence[Workflow]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Workflow)
                .where(Workflow.owner == owner, Workflow.deleted_at.is_(None))
                .order_by(Workflow.created_at)
            )
            return list(rows)

    async def create(
        self, owner: str, name: str, canvas: dict[str, Any], plan_hash: str, *, actor: str | None = None
    ) -> SavedVersion:
        """``actor``: who saves it, recorded in the audit log in the same transaction."""
        workflow = Workflow(id=str(uuid.uuid4()), owner=owner, name=name, latest_version=1)
        async with self.sessions() as session:
            session.add(workflow)
            session.add(WorkflowVersion(workflow_id=workflow.id, version=1, canvas=canvas, plan_hash=plan_hash))
            if actor is not None:
                audit.record(
                    session,
                    owner=owner,
                    actor=actor,
                    action="workflow.create",
                    target_type="workflow",
                    target_id=workflow.id,
                    details={"name": name, "version": 1, "plan_hash": plan_hash},
                )
            await _commit_or_conflict(session, owner, name)
        return SavedVersion(workflow.id, owner, name, 1, 1, canvas, plan_hash)

    async def add_version(
        self,
        owner: str,
        workflow_id: str,
        name: str,
        canvas: dict[str, Any],
        plan_hash: str,
        *,
        actor: str | None = None,
    ) -> SavedVersion:
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            workflow.latest_version += 1
            workflow.name, workflow.updated_at = name, utcnow()
            session.add(
                WorkflowVersion(
                    workflow_id=workflow.id, version=workflow.latest_version, canvas=canvas, plan_hash=plan_hash
                )
            )
            if actor is not None:
                audit.record(
                    session,
                    owner=owner,
                    actor=actor,
                    action="workflow.save",
                    target_type="workflow",
                    target_id=workflow.id,
                    details={"name": name, "version": workflow.latest_version, "plan_hash": plan_hash},
                )
            await _commit_or_conflict(session, owner, name)
            return SavedVersion(
                workflow.id,
                owner,
                name,
                workflow.latest_version,
                workflow.latest_version,
                canvas,
                plan_hash,
                workflow.status or "active",
            )

    async def delete(self, owner: str, workflow_id: str, *, actor: str | None = None) -> None:
        """Mark deleted: versions and runs stay readable for history."""
        async with self.sessions() as session:
            workflow = await _workflow(session, owner, workflow_id)
            workflow.deleted_at = utcnow()
            if actor is not None:
                audit.record(
                    session,
                    owner=owner,
                    actor=actor,
                    action="workflow.delete",
                    target_type="workflow",
                    target_id=workflow.id,
                    details={"name": workflow.name},
                )
            await session.commit()


class Executions:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def get(self, owner: str, execution_id: str) -> ExecutionRow:
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
        if row is None or row.owner != owner:
            raise NotFound(f"execution {execution_id} not found")
        return row

    async def flow_runs_of(self, execution_ids: Sequence[str]) -> dict[str, tuple[str | None, str]]:
        """``{execution id: (its flow run id or None while not created, its stored status)}``
        for those of ``execution_ids`` the store has, in one query."""
        if not execution_ids:
            return {}
        query = select(ExecutionRow.id, ExecutionRow.flow_run_id, ExecutionRow.status).where(
            ExecutionRow.id.in_(list(execution_ids))
        )
        async with self.sessions() as session:
            rows = (await session.execute(query)).all()
        return {row.id: (row.flow_run_id, row.status) for row in rows}

    async def list(
        self,
        owner: str,
        *,
        workflow_id: str | None = None,
        status: str | None = None,
        trigger: str | None = None,
        limit: int = 500,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[ExecutionRow]:
        """Newest first. A status that is not final selects every run not ended yet (their
        stored status may be behind Prefect's: the caller refreshes and filters them).
        ``since`` (inclusive) and ``until`` (exclusive) bound the creation time."""
        query = select(ExecutionRow).where(ExecutionRow.owner == owner)
        if workflow_id:
            query = query.where(ExecutionRow.workflow_id == workflow_id)
        if status in FINAL_STATUSES:
            query = query.where(ExecutionRow.status == status)
        elif status is not None:
            query = query.where(ExecutionRow.status.not_in(list(FINAL_STATUSES)))
        if trigger:
            query = query.where(ExecutionRow.trigger_type == trigger)
        if since is not None:
            query = query.where(ExecutionRow.created_at >= _utc(since))
        if until is not None:
            query = query.where(ExecutionRow.created_at < _utc(until))
        query = query.order_by(ExecutionRow.created_at.desc()).limit(limit)
        async with self.sessions() as session:
            return list(await session.scalars(query))

    async def record_start(
        self,
        *,
        execution_id: str,
        owner: str,
        workflow_id: str,
        version: int,
        workflow_name: str,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        status: str = "pending",
        actor: str | None = None,
        flow_run_id: str | None = None,
    ) -> bool:
        """Create the row of a run; a worker starting a run that has one (registered by the
        API, or a run executed again) marks it running and clears the old result. ``actor``:
        who started it through the API, recorded in the audit log with the row.
        ``flow_run_id``: its flow run, recorded when the row has none yet (the API that
        created it died before it could record it). False for a run the API accepted and
        ended (cancelled, or failed for want of a flow run) before it knew of this flow run
        (``_refuse_late_flow_run``): the flow run must not run it."""
        if (  # the flow run of a run the API accepted: refused when the run ended before it was known
            status != "pending"
            and flow_run_id is not None
            and flow_run_id != execution_id
            and await self._refuse_late_flow_run(execution_id, flow_run_id)
        ):
            return False
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
            started: dict[str, Any] = {
                "owner": owner,
                "actor": actor,
                "action": "execution.start",
                "target_type": "execution",
                "target_id": execution_id,
                "details": audit.start_details(workflow_id, version, trigger),
            }
            # A row already there: a worker recorded the run first, or an Idempotency-Key
            # replayed a request (then its entry exists and the replay started nothing).
            if actor is not None and (
                row is None
                or not await audit.recorded(session, owner=owner, action="execution.start", target_id=execution_id)
            ):
                audit.record(session, **started)
            if row is None:
                session.add(
                    ExecutionRow(
                        id=execution_id,
                        owner=owner,
                        workflow_id=workflow_id,
                        version=version,
                        workflow_name=workflow_name,
                        status=status,
                        inputs=inputs,
                        trigger_type=str(trigger.get("type", "api")),
                        trigger=trigger,
                        flow_run_id=flow_run_id,
                    )
                )
            elif status != "pending":  # a worker (re)starting it; an API retry changes nothing
                row.version, row.status, row.updated_at, row.result = version, status, utcnow(), None
                if row.flow_run_id is None and flow_run_id is not None:
                    row.flow_run_id = flow_run_id
            try:
                await session.commit()
            except IntegrityError:  # the API and the worker raced to create it: it exists now
                await session.rollback()
                await self.set_status(execution_id, status)
                if actor is not None:  # the entry went with the rolled back insert
                    async with self.sessions() as again:
                        audit.record(again, **started)
                        await again.commit()
            return True

    async def _refuse_late_flow_run(self, execution_id: str, flow_run_id: str) -> bool:
        """Whether ``flow_run_id`` is a late flow run of a run the API ended before it knew
        of one (then recorded as the run's, which stays as it ended). One statement, so a
        retry of the run (``reopen``) and this refusal cannot both win."""
        async with self.sessions() as session:
            refused = await session.execute(
                update(ExecutionRow)
                .where(*_ended_without_flow_run(execution_id))
                .values(flow_run_id=flow_run_id, updated_at=utcnow())
            )
            await session.commit()
            return bool(getattr(refused, "rowcount", 0))

    async def set_status(self, execution_id: str, status: str) -> None:
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id)
            if row is not None and row.status not in FINAL_STATUSES:
                row.status, row.updated_at = status, utcnow()
                await session.commit()

    async def reopen(self, execution_id: str, version: int, *, retried_by: str, resend: bool = False) -> int | None:
        """A run retried: pending again (with the version it will run), its old result gone,
        its trigger saying it is a retry (what first started it under ``first``). Returns how
        many times it has been retried, this one included. ``resend``: a run that ended with
        no flow run, back in the outbox (``store.outbox``) as if just accepted; None, changing
        nothing, when a flow run of it was recorded meanwhile (``record_start`` refusing a
        late one): one statement decides which came first, so either the retry or the
        refusal wins, never both."""
        async with self.sessions() as session:
            if resend:
                claimed = await session.execute(
                    update(ExecutionRow)
                    .where(*_ended_without_flow_run(execution_id))
                    .values(status="pending", create_after=utcnow(), create_attempts=0)
                )
                if not getattr(claimed, "rowcount", 0):
                    await session.rollback()
                    return None
            row = await session.get(ExecutionRow, execution_id)
            if row is None:
                return 0
            trigger = dict(row.trigger or {"type": row.trigger_type})
            retries = int(trigger.get("retries", 0)) + 1
            first = trigger.get("first", trigger) if trigger.get("type") == "retry" else trigger
            row.trigger = {"type": "retry", "retries": retries, "retried_by": retried_by, "first": first}
            row.trigger_type = "retry"
            row.status, row.result, row.version, row.updated_at = "pending", None, version, utcnow()
            audit.record(
                session,
                owner=row.owner,
                actor=retried_by,
                action="execution.retry",
                target_type="execution",
                target_id=execution_id,
                details={"workflow_id": row.workflow_id, "version": version, "retries": retries},
            )
            await session.commit()
            return retries

    async def record_result(self, execution_id: str, result: dict[str, Any], *, unless_stored: bool = False) -> None:
        """Store the run's result. ``unless_stored``: only if it has none (what the API makes
        up from Prefect's state never replaces what the run's worker stored)."""
        async with self.sessions() as session:
            row = await session.get(ExecutionRow, execution_id, with_for_update=unless_stored)
            if row is not None and not (unless_stored and row.result is not None):
                row.status, row.result, row.updated_at = str(result.get("status", "failed")), result, utcnow()
                await session.commit()

    async def keep_output(self, execution_id: str, ref: str, content: bytes) -> None:
        """Keep a node output of a run too large for its events (JSON), under a new ``ref``."""
        async with self.sessions() as session:
            session.add(LargeOutputRow(execution_id=execution_id, ref=ref, content=content.decode()))
            await session.commit()

    async def output(self, owner: str, execution_id: str, ref: str) -> bytes:
        """A large output of a run of ``owner``, as the JSON it was kept as."""
        await self.get(owner, execution_id)
        async with self.sessions() as session:
            row = await session.get(LargeOutputRow, (execution_id, ref))
        if row is None:
            raise NotFound(f"execution {execution_id} has no output {ref!r}")
        return row.content.encode()


def _utc(moment: datetime) -> datetime:
    """The moment in UTC (a naive one is taken as UTC): PostgreSQL compares aware times, and
    SQLite, which keeps the wall time without its zone, then compares UTC with UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def _workflow(session: AsyncSession, owner: str, workflow_id: str) -> Workflow:
    workflow = await session.get(Workflow, workflow_id)
    if workflow is None or workflow.owner != owner or workflow.deleted_at is not None:
        raise NotFound(f"workflow {workflow_id} not found")
    return workflow


async def _commit_or_conflict(session: AsyncSession, owner: str, name: str) -> None:
    """Commit; a name the owner already uses is a 409 naming the workflow that has it, so a
    client can save a new version of it instead (``PUT /api/workflows/{id}``)."""
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        existing = await session.scalar(
            select(Workflow.id).where(Workflow.owner == owner, Workflow.name == name, Workflow.deleted_at.is_(None))
        )
        where = f" (id {existing}): save a new version of it with PUT /api/workflows/{existing}, or use another name"
        raise Conflict(
            f"a workflow named {name!r} already exists" + (where if existing else ""),
            [
                {
                    "code": "name_taken",
                    "field": "name",
                    "message": f"{name!r} is the name of workflow {existing}",
                    "related": [existing] if existing else [],
                }
            ],
        ) from exc


@dataclass(frozen=True)
class NodeOutcome:
    """A node execution of a run that ended (``store.db.NodeOutcomeRow``)."""

    node_id: str
    path: tuple[int, ...]
    key: str
    status: str  # completed | started | failed
    outcome: dict[str, Any]
    attempts: int = 1
    dead_letter: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class DeadLetter:
    id: str
    run_id: str
    workflow_id: str | None
    node_id: str
    path: tuple[int, ...]
    error: dict[str, Any]
    config: dict[str, Any]
    attempts: int
    failed_at: datetime


def _path_text(path: Sequence[int]) -> str:
    return ".".join(map(str, path))


def _path_of(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")) if text else ()


class NodeOutcomes:
    """The journal of node executions that runs executed again restore, and the dead
    letters among them."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def of_run(self, run_id: str) -> list[NodeOutcome]:
        async with self.sessions() as session:
            rows = await session.scalars(select(NodeOutcomeRow).where(NodeOutcomeRow.run_id == run_id))
            return [
                NodeOutcome(
                    r.node_id,
                    _path_of(r.path),
                    r.key,
                    r.status,
                    r.outcome,
                    r.attempts,
                    r.dead_letter,
                    as_utc(r.started_at),
                    as_utc(r.ended_at),
                )
                for r in rows
            ]

    async def save(
        self,
        run_id: str,
        outcomes: Sequence[NodeOutcome],
        *,
        workflow_id: str | None,
        owner: str | None,
        executions: Sequence[NodeExecution] = (),
        execution_id: str | None = None,
    ) -> None:
        """Insert or replace, in one transaction (one statement); with the node ``executions``
        of the run ``execution_id`` (``store.node_executions``) in the same transaction."""
        if not outcomes and not executions:
            return
        now = utcnow()
        values = [
            {
                "id": str(uuid.uuid4()),
                "run_id": run_id,
                "execution_id": execution_id if execution_id != run_id else None,
                "node_id": o.node_id,
                "path": _path_text(o.path),
                "key": o.key,
                "status": o.status,
                "outcome": o.outcome,
                "attempts": o.attempts,
                "workflow_id": workflow_id,
                "owner": owner,
                "dead_letter": o.dead_letter,
                "started_at": o.started_at or now,
                "ended_at": o.ended_at or now,
            }
            for o in outcomes
        ]
        async with self.sessions() as session:
            assert session.bind is not None  # the store's sessions are made bound to its engine
            dialect = session.bind.dialect.name
            insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
            statement = insert(NodeOutcomeRow)
            statement = statement.on_conflict_do_update(
                index_elements=["run_id", "node_id", "path"],
                set_={
                    name: statement.excluded[name]
                    for name in ("key", "status", "outcome", "attempts", "dead_letter", "ended_at")
                },
            )
            if values:
                await session.execute(statement, values)
            await NodeExecutions.save_in(session, execution_id or run_id, executions)
            await session.commit()

    async def dead_letters(self, owner: str, *, workflow_id: str | None = None, limit: int = 500) -> list[DeadLetter]:
        query = select(NodeOutcomeRow).where(NodeOutcomeRow.owner == owner, NodeOutcomeRow.dead_letter.is_(True))
        if workflow_id:
            query = query.where(NodeOutcomeRow.workflow_id == workflow_id)
        async with self.sessions() as session:
            rows = await session.scalars(query.order_by(NodeOutcomeRow.ended_at.desc()).limit(limit))
            return [_dead_letter(r) for r in rows]

    async def dead_letter(self, owner: str, dead_letter_id: str) -> DeadLetter:
        async with self.sessions() as session:
            row = await session.scalar(select(NodeOutcomeRow).where(NodeOutcomeRow.id == dead_letter_id))
        if row is None or row.owner != owner or not row.dead_letter:
            raise NotFound(f"dead letter {dead_letter_id} not found")
        return _dead_letter(row)

    async def dismiss(self, owner: str, dead_letter_id: str) -> None:
        """No longer a dead letter (the failed outcome stays, for the run's history)."""
        await self.dead_letter(owner, dead_letter_id)
        async with self.sessions() as session:
            await session.execute(
                update(NodeOutcomeRow).where(NodeOutcomeRow.id == dead_letter_id).values(dead_letter=False)
            )
            await session.commit()

    async def dismiss_run(self, run_id: str) -> None:
        """A run retried: its dead letters are handled (they come back if it fails again)."""
        async with self.sessions() as session:
            await session.execute(
                update(NodeOutcomeRow)
                .where(or_(NodeOutcomeRow.run_id == run_id, NodeOutcomeRow.execution_id == run_id))
                .values(dead_letter=False)
            )
            await session.commit()


def _dead_letter(row: NodeOutcomeRow) -> DeadLetter:
    return DeadLetter(
        row.id,
        row.execution_id or row.run_id,
        row.workflow_id,
        row.node_id,
        _path_of(row.path),
        row.outcome.get("error") or {},
        row.outcome.get("config") or {},
        row.attempts,
        as_utc(row.ended_at),
    )
