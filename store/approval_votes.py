"""Each person's decision on an approval that several people decide (``required`` > 1, or
approvers named): one row per (approval, person), so the count of approvals and the refusal
of a second decision by the same person hold across API processes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from store.database import as_utc
from store.db import ApprovalVoteRow, Sessions, utcnow
from store.errors import Conflict


@dataclass(frozen=True)
class Vote:
    by: str
    at: datetime
    approved: bool
    input: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"by": self.by, "at": self.at.isoformat(), "approved": self.approved, "input": self.input}


def _vote(row: ApprovalVoteRow) -> Vote:
    return Vote(row.decided_by, as_utc(row.decided_at), row.approved, dict(row.input))


class ApprovalVotes:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def add(self, approval_id: str, run_id: str, by: str, approved: bool, values: dict[str, Any]) -> Vote:
        row = ApprovalVoteRow(
            approval_id=approval_id, decided_by=by, run_id=run_id, approved=approved, input=values, decided_at=utcnow()
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(f"{by} has already decided approval {approval_id}") from None
        return _vote(row)

    async def of(self, approval_ids: list[str]) -> dict[str, list[Vote]]:
        """The decisions on each approval, oldest first."""
        if not approval_ids:
            return {}
        query = (
            select(ApprovalVoteRow)
            .where(ApprovalVoteRow.approval_id.in_(approval_ids))
            .order_by(ApprovalVoteRow.decided_at, ApprovalVoteRow.decided_by)
        )
        found: dict[str, list[Vote]] = {}
        async with self.sessions() as session:
            for row in await session.scalars(query):
                found.setdefault(row.approval_id, []).append(_vote(row))
        return found
