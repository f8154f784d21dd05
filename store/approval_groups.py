"""Groups of approvers: named lists of identities (API key owner names) that an owner's
approval nodes name in ``approvers.groups``. Scoped to the owner, like everything in the
store: a group is resolved in the namespace of the run's owner."""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.database import as_utc
from store.db import ApprovalGroupRow, Sessions, utcnow
from store.errors import Conflict, NotFound


@dataclass(frozen=True)
class Group:
    id: str
    owner: str
    name: str
    members: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


def _group(row: ApprovalGroupRow) -> Group:
    # SQLite gives timestamps back without their zone (store.database.as_utc).
    return Group(row.id, row.owner, row.name, tuple(row.members), as_utc(row.created_at), as_utc(row.updated_at))


def _unique(members: list[str]) -> list[str]:
    return list(dict.fromkeys(members))


class ApprovalGroups:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def create(self, owner: str, name: str, members: builtins.list[str]) -> Group:
        now = utcnow()
        row = ApprovalGroupRow(
            id=str(uuid.uuid4()), owner=owner, name=name, members=_unique(members), created_at=now, updated_at=now
        )
        async with self.sessions() as session:
            session.add(row)
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(
                    f"a group named {name!r} exists already", [{"field": "name", "message": "taken"}]
                ) from None
        return _group(row)

    async def list(self, owner: str) -> list[Group]:
        query = select(ApprovalGroupRow).where(ApprovalGroupRow.owner == owner).order_by(ApprovalGroupRow.name)
        async with self.sessions() as session:
            return [_group(row) for row in await session.scalars(query)]

    async def get(self, owner: str, group_id: str) -> Group:
        async with self.sessions() as session:
            return _group(await self._row(session, owner, group_id))

    async def replace(self, owner: str, group_id: str, name: str, members: builtins.list[str]) -> Group:
        async with self.sessions() as session:
            row = await self._row(session, owner, group_id)
            row.name, row.members, row.updated_at = name, _unique(members), utcnow()
            try:
                await session.commit()
            except IntegrityError:
                raise Conflict(
                    f"a group named {name!r} exists already", [{"field": "name", "message": "taken"}]
                ) from None
            return _group(row)

    async def delete(self, owner: str, group_id: str) -> None:
        async with self.sessions() as session:
            await session.delete(await self._row(session, owner, group_id))
            await session.commit()

    async def members(self, owner: str, names: builtins.list[str]) -> dict[str, tuple[str, ...]]:
        """The members of ``owner``'s groups among ``names`` (a group that does not exist,
        or no longer, has no members)."""
        if not names:
            return {}
        query = select(ApprovalGroupRow).where(ApprovalGroupRow.owner == owner, ApprovalGroupRow.name.in_(names))
        async with self.sessions() as session:
            return {row.name: tuple(row.members) for row in await session.scalars(query)}

    async def of_member(self, identity: str) -> dict[str, set[str]]:
        """For every owner, the names of its groups ``identity`` belongs to."""
        found: dict[str, set[str]] = {}
        async with self.sessions() as session:
            for row in await session.scalars(select(ApprovalGroupRow)):
                if identity in row.members:
                    found.setdefault(row.owner, set()).add(row.name)
        return found

    @staticmethod
    async def _row(session: AsyncSession, owner: str, group_id: str) -> ApprovalGroupRow:
        row = await session.get(ApprovalGroupRow, group_id)
        if row is None or row.owner != owner:
            raise NotFound(f"group {group_id} not found")
        return row
