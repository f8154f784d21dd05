"""Who owns which runs, across owners: what the approval desk needs to find the approvals a
person may decide in runs that are not theirs. Nothing else of the runs is read."""

from __future__ import annotations

from sqlalchemy import select

from store.db import ExecutionRow, Sessions


async def run_owners(sessions: Sessions, run_ids: list[str]) -> dict[str, str]:
    """``{run_id: owner}`` of the runs FlowMaestro knows among ``run_ids``."""
    if not run_ids:
        return {}
    query = select(ExecutionRow.id, ExecutionRow.owner).where(ExecutionRow.id.in_(run_ids))
    async with sessions() as session:
        return {run_id: owner for run_id, owner in (await session.execute(query)).all()}
