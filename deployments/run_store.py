"""What a worker's runs read from and write to FlowMaestro's store.

A run of a saved workflow names it (``workflow_id``, ``owner``, maybe ``version``); the
worker loads that version's canvas here, records that the run started (so a run started
from the Prefect UI or a schedule is an execution like any other) and stores its result
when it ends. Sub-workflow nodes resolve saved workflows here too, within the owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from flows.run_context import SavedCanvas
from node_handlers.base import NodeError
from store.db import make_engine, sessions
from store.errors import NotFound
from store.node_executions import NodeExecution, NodeExecutions
from store.queries import Executions, NodeOutcome, NodeOutcomes, Workflows


class SqlRunStore:
    """The ``flows.run_context.RunStore`` of a worker: FlowMaestro's SQL store as its runs see it."""

    def __init__(self, engine: AsyncEngine, *, node_execution_retention_days: float | None = None):
        """``node_execution_retention_days``: node executions recorded longer ago than this
        are deleted (at most hourly, after a write); None keeps them with the run's record."""
        self.engine = engine
        database = sessions(engine)
        self.workflows = Workflows(database)
        self.executions = Executions(database)
        self.outcomes_table = NodeOutcomes(database)
        self.node_executions = NodeExecutions(database, retention_days=node_execution_retention_days)

    @classmethod
    def from_url(cls, url: str, *, node_execution_retention_days: float | None = None) -> SqlRunStore:
        return cls(make_engine(url), node_execution_retention_days=node_execution_retention_days)

    async def load(self, owner: str, workflow_id: str, version: int | None) -> SavedCanvas:
        try:
            saved = await self.workflows.version(owner, workflow_id, version)
        except NotFound as exc:
            raise LookupError(f"workflow {workflow_id} of {owner!r}: {exc.message} (deleted?)") from exc
        return SavedCanvas(
            workflow_id=saved.workflow_id,
            name=saved.name,
            version=saved.version,
            canvas=saved.canvas,
            status=saved.status,
        )

    async def resolve_subworkflow(
        self, reference: str, version: int | None, parent_run_id: str, owner: str | None
    ) -> dict[str, Any]:
        """The canvas of a saved workflow of the same owner as the run asking for it
        (a ``flows.subworkflows.WorkflowResolver``)."""
        if owner is None:
            raise NodeError(
                f"subworkflow {reference!r}: a run without an owner cannot use saved workflows",
                error_type="SubworkflowNotFound",
            )
        try:
            return (await self.workflows.version(owner, reference, version)).canvas
        except NotFound as exc:
            raise NodeError(f"subworkflow {reference!r}: {exc.message}", error_type="SubworkflowNotFound") from exc

    async def started(
        self,
        run_id: str,
        *,
        owner: str,
        workflow_id: str,
        version: int,
        name: str,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        flow_run_id: str | None = None,
    ) -> bool:
        """``flow_run_id``: the run's flow run, when its id is not that (a run the API accepted).
        False: the run ended through the API before it knew of this flow run, which must
        not run it."""
        return await self.executions.record_start(
            execution_id=run_id,
            owner=owner,
            workflow_id=workflow_id,
            version=version,
            workflow_name=name,
            inputs=inputs,
            trigger=trigger,
            status="running",
            flow_run_id=flow_run_id or run_id,
        )

    async def skipped(
        self,
        run_id: str,
        *,
        owner: str,
        workflow_id: str,
        inputs: dict[str, Any],
        trigger: dict[str, Any],
        reason: str,
        flow_run_id: str | None = None,
    ) -> None:
        """A run that ended without executing (a scheduled run skipped or cancelled before a
        worker ran it): listed ``cancelled`` with ``reason`` as its error, like any run."""
        try:
            saved = await self.load(owner, workflow_id, None)
        except LookupError:  # its workflow is gone: nothing to list it under
            return
        await self.executions.record_start(
            execution_id=run_id,
            owner=owner,
            workflow_id=saved.workflow_id,
            version=saved.version,
            workflow_name=saved.name,
            inputs=inputs,
            trigger=trigger,
            status="cancelled",
            flow_run_id=flow_run_id or run_id,
        )
        result = {
            "id": run_id,
            "workflow": saved.name,
            "workflow_id": saved.workflow_id,
            "version": saved.version,
            "status": "cancelled",
            "error": {"message": reason, "type": "Skipped"},
            "trigger": trigger,
        }
        await self.executions.record_result(run_id, result)

    async def ended(self, run_id: str, result: dict[str, Any]) -> None:
        await self.executions.record_result(run_id, result)

    async def keep_output(self, run_id: str, ref: str, content: bytes) -> None:
        await self.executions.keep_output(run_id, ref, content)

    async def outcomes(self, journal_id: str) -> list[NodeOutcome]:
        return await self.outcomes_table.of_run(journal_id)

    async def save_outcomes(
        self,
        journal_id: str,
        outcomes: Sequence[NodeOutcome],
        *,
        workflow_id: str | None,
        owner: str | None,
        executions: Sequence[NodeExecution] = (),
        execution_id: str | None = None,
    ) -> None:
        await self.outcomes_table.save(
            journal_id, outcomes, workflow_id=workflow_id, owner=owner, executions=executions, execution_id=execution_id
        )
        if executions:
            await self.node_executions.purge_due()

    async def close(self) -> None:
        await self.engine.dispose()
