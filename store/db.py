"""Tables of workflows, their versions and executions (SQLAlchemy 2, async).

SQLite by default, PostgreSQL via ``FLOWMAESTRO_DATABASE_URL``. The schema is managed by
Alembic (``store/migrations``), upgraded when the API or a worker starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.database import create_database_engine, utcnow
from store.unavailable import database_calls


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: DateTime(timezone=True), bool: Boolean}  # noqa: RUF012 (SQLAlchemy's hook)


class Workflow(Base):
    __tablename__ = "workflows"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200))
    latest_version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    status: Mapped[str] = mapped_column(String(16), default="active")
    """active | draft | archived (``store.workflow_meta``)."""
    paused_schedules: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """The Prefect schedules its status paused, resumed when it is active again."""

    __table_args__ = (
        # Names are unique per owner among workflows that are not deleted.
        Index(
            "uq_workflow_owner_name",
            "owner",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class WorkflowTag(Base):
    """A tag of a workflow: a row each, so a list filters by tag with an index on both databases."""

    __tablename__ = "workflow_tags"
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class AuditRow(Base):
    """An entry of the audit log (``store.audit``): appended, never changed or deleted by a route."""

    __tablename__ = "audit_log"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    owner: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class WorkflowVersion(Base):
    __tablename__ = "workflow_versions"
    workflow_id: Mapped[str] = mapped_column(ForeignKey("workflows.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    canvas: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExecutionRow(Base):
    """What FlowMaestro keeps of a run; Prefect keeps the rest (states, task runs, logs)."""

    __tablename__ = "executions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    """The execution id: one of our own for a run the API accepted (``api.outbox``), the
    flow run id for a run started elsewhere (a schedule, the Prefect UI, a parent run)."""
    flow_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True, unique=True)
    """Its Prefect flow run; null while the API has accepted the run and not created it yet."""
    start_request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What creating its flow run takes beyond the row (journal, traceparent, breakpoints);
    never a secret. Kept for the record once the flow run exists."""
    idempotency_key: Mapped[str | None] = mapped_column(String(400), nullable=True, unique=True)
    """The key the run was accepted under: the same key answers the same execution."""
    create_after: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    """When a drainer may (next) try to create its flow run: a lease while one tries, the
    backoff after a failure."""
    create_attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    workflow_id: Mapped[str] = mapped_column(String(36), index=True)
    version: Mapped[int] = mapped_column(Integer)
    workflow_name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    trigger_type: Mapped[str] = mapped_column(String(16), default="api", index=True)
    """What started the run: api, schedule, webhook, prefect-ui, retry or parent."""
    trigger: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """The trigger with its details (``{"type": "schedule", "schedule_id": ...}``)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class LargeOutputRow(Base):
    """A node output too large for events and run records (``flows/large_outputs.py``), as
    JSON, kept by the run's worker and read back only by ``GET /api/executions/{id}/outputs/
    {ref}`` (the run's owner). Here, not in Prefect's result storage: there a file shaped like a
    result record is one that Prefect unpickles for whoever names it in a state."""

    __tablename__ = "large_outputs"
    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), primary_key=True)
    """A random key (uuid4 hex) the run's events and result refer to it by."""
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AgentMemoryRow(Base):
    """An agent node's conversation under a key of its ``memory``, per owner and workflow
    (``node_handlers.agent_memory``): loaded before its first turn, saved after its last."""

    __tablename__ = "agent_memories"
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    tokens: Mapped[int] = mapped_column(Integer)
    """The stored messages' size in tokens, as counted when they were trimmed."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class NodeOutcomeRow(Base):
    """One node execution ``(node_id, path)`` of a run that ended: what a run executed again
    (after a crash, a suspend, a retry) restores instead of executing it again. A failed one
    is kept for its dead letter and replaced when the node completes on a later attempt."""

    __tablename__ = "node_outcomes"
    id: Mapped[str] = mapped_column(String(36), unique=True)
    """The id of its dead letter."""
    run_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    """The flow run id; for a sub-workflow's child run, ``<parent's>:<node id>:<path>`` (the
    child executed again is a new flow run that must find its nodes)."""
    execution_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    """The execution, when its journal has an id of its own (a rerun's, a node test's)."""
    node_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The iteration/branch indexes, dot-separated ("" at the top level)."""
    key: Mapped[str] = mapped_column(String(120))
    """Hash of the handler version and resolved configuration: restored only when equal."""
    status: Mapped[str] = mapped_column(String(16))
    """completed | started (a waiting node: when it first started) | failed."""
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Completed: output, handles, variables, usage; failed: error, redacted configuration."""
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    workflow_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    dead_letter: Mapped[bool] = mapped_column(default=False, index=True)
    """Failed after its last attempt with no error edge to catch it, and not dismissed."""
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime] = mapped_column(default=utcnow)


class NodeExecutionRow(Base):
    """One node execution ``(node_id, path)`` of a run as ``GET /api/executions/{id}/nodes``
    shows it (``store.node_executions``): written by the run's worker with its journal."""

    __tablename__ = "node_executions"
    execution_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The iteration/branch indexes, dot-separated ("" at the top level)."""
    type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    input: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The resolved configuration, secrets redacted."""
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    """The output, or its large-output reference (``flows.large_outputs``)."""
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    restored: Mapped[bool] = mapped_column(default=False)
    logs: Mapped[list[Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)

    __table_args__ = (Index("ix_node_executions_order", "execution_id", "started_at", "node_id", "path"),)


class ScheduleOverlap(Base):
    """What Prefect cannot keep of a schedule: its overlap policy (the rest is Prefect's)."""

    __tablename__ = "schedule_overlaps"
    schedule_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    """The Prefect deployment schedule id."""
    owner: Mapped[str] = mapped_column(String(128), index=True)
    workflow_id: Mapped[str] = mapped_column(String(36), index=True)
    overlap: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookRow(Base):
    """A webhook of a workflow; its secret is stored encrypted (``store.secrets``)."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    workflow_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_encrypted: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The verification scheme and its options (``api.webhook_schemes``); null: ours."""
    inputs_map: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """How a request becomes inputs; null: the JSON body is the inputs."""


class CredentialRow(Base):
    """A credential an owner stored (``store.credentials``): its values sealed together as one
    JSON object (``store.secrets``); the names of its fields in clear, to list them."""

    __tablename__ = "credentials"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500), default="")
    fields: Mapped[list[str]] = mapped_column(JSON)
    data_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (Index("uq_credential_owner_name", "owner", "name", unique=True),)


class WebhookDelivery(Base):
    """A webhook request that carried an ``Idempotency-Key``, and the run it started."""

    __tablename__ = "webhook_deliveries"
    webhook_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    execution_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKeyRow(Base):
    """An owner's API key made through the API: only its SHA-256 is kept (the key is random,
    32 bytes, so a fast hash is enough: nothing to guess), with what identifies it to people."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to recognise it in a list."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApprovalGroupRow(Base):
    """A group of identities an owner's approvals name (``approvers.groups``)."""

    __tablename__ = "approval_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128))
    members: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("uq_approval_group_owner_name", "owner", "name", unique=True),)


class ApprovalVoteRow(Base):
    """One person's decision on an approval that several decide: at most one per person
    (the primary key), so a second one is a conflict whichever API process takes it."""

    __tablename__ = "approval_votes"
    approval_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    decided_by: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    approved: Mapped[bool] = mapped_column(Boolean)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApprovalNoticeRow(Base):
    """A notification of an approval (its request, the k-th reminder, its escalation), claimed
    by the API process that sends it: the primary key lets one process of several win."""

    __tablename__ = "approval_notices"
    approval_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    notice: Mapped[str] = mapped_column(String(32), primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApprovalLinkUseRow(Base):
    """A decision link used: each link decides once."""

    __tablename__ = "approval_link_uses"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    approval_id: Mapped[str] = mapped_column(String(200))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


def make_engine(url: str, **options: Any) -> AsyncEngine:
    """The API's engine: the same connection setup as the event log's (SQLite: WAL, busy
    timeout, foreign keys), with SQLAlchemy's default pool; ``options`` as
    ``create_database_engine`` takes them."""
    return create_database_engine(url, **options)


Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""What the store's queries open their sessions with (``sessions(engine)``)."""


def sessions(engine: AsyncEngine) -> Sessions:
    """Sessions of ``engine``; a failure inside one that means the database is down raises
    ``Unavailable("database")`` (``store.unavailable``), whatever the query."""
    maker = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def session() -> AsyncIterator[AsyncSession]:
        async with database_calls(), maker() as opened:
            yield opened

    return session


async def upgrade_schema(url: str) -> None:
    """Run the Alembic migrations to head (in a thread: Alembic's API is synchronous and
    our migration environment runs its own event loop)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    await asyncio.to_thread(command.upgrade, config, "head")
