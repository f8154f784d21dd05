"""What the approval notifier claimed and what decision links were used: one row each, so
that of several API processes one sends a notice, and a link decides once."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from store.db import ApprovalLinkUseRow, ApprovalNoticeRow, Sessions, utcnow
from store.errors import Conflict


class ApprovalNotices:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def claim(self, approval_id: str, notice: str) -> bool:
        """True for the one caller that claims ``notice`` of the approval first."""
        async with self.sessions() as session:
            session.add(ApprovalNoticeRow(approval_id=approval_id, notice=notice, sent_at=utcnow()))
            try:
                await session.commit()
            except IntegrityError:
                return False
        return True

    async def use_link(self, nonce: str, approval_id: str) -> None:
        """Mark a decision link used; Conflict when it was already."""
        async with self.sessions() as session:
            session.add(ApprovalLinkUseRow(nonce=nonce, approval_id=approval_id, used_at=utcnow()))
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict("this decision link has been used already") from None

    async def link_used(self, nonce: str) -> bool:
        async with self.sessions() as session:
            return await session.get(ApprovalLinkUseRow, nonce) is not None
