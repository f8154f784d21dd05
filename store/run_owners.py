"""Who owns which runs, across owners: what the approval desk needs to find the approvals a
person may decide in runs that are not theirs. Nothing else of the runs is read."""

from __future__ import annotations

from sqlalchemy import select

from store.db import ExecutionRow, Sessions


async def run_owners(sessions: Sessions, flow_run_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{flow_run_id: (execution id, owner)}`` of the runs FlowMaestro knows among
    ``flow_run_ids`` (approvals live on flow runs; a run the API accepted has an execution
    id of its own)."""
    if not flow_run_ids:
        return {}
    query = select(ExecutionRow.flow_run_id, ExecutionRow.id, ExecutionRow.owner).where(
        ExecutionRow.flow_run_id.in_(flow_run_ids)
    )
    async with sessions() as session:
        return {
            str(flow_run_id): (execution_id, owner)
            for flow_run_id, execution_id, owner in (await session.execute(query)).all()
        }
