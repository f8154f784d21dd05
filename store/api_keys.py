"""Owners' API keys made through the API (``/api/admin/keys``): stored as SHA-256 hashes,
named, revocable, with their last use. Keys from ``FLOWMAESTRO_API_KEYS`` are not here:
they are the operator's, read at start (``api.settings``)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from store.database import as_utc
from store.db import ApiKeyRow, Sessions, utcnow
from store.errors import NotFound

KEY_PREFIX = "fm_"
TOUCH_EVERY = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per key: not one write per request."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    owner: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(row.id, row.owner, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at)


class ApiKeys:
    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def create(self, owner: str, name: str) -> tuple[ApiKey, str]:
        """A new key: (what is stored, the key itself, which exists only in this answer)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKeyRow(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            key_hash=hash_key(key),
            prefix=key[:10],
            created_at=utcnow(),
        )
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return _key(row), key

    async def list(self, owner: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
        query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
        if owner is not None:
            query = query.where(ApiKeyRow.owner == owner)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        async with self.sessions() as session:
            return [_key(row) for row in await session.scalars(query)]

    async def revoke(self, key_id: str) -> ApiKey:
        async with self.sessions() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None:
                raise NotFound(f"API key {key_id} not found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                await session.commit()
            return _key(row)

    async def owner_of(self, key: str) -> str | None:
        """The owner of an active key (recording its use), or None."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key), ApiKeyRow.revoked_at.is_(None))
            )
            if row is None:
                return None
            now = utcnow()
            last = row.last_used_at
            if last is None or as_utc(last) < now - TOUCH_EVERY:
                await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == row.id).values(last_used_at=now))
                await session.commit()
            return row.owner

    async def has_owner(self, owner: str) -> bool:
        """Whether the owner has an active key here (their stream tokens stay valid)."""
        async with self.sessions() as session:
            found = await session.scalar(
                select(ApiKeyRow.id).where(ApiKeyRow.owner == owner, ApiKeyRow.revoked_at.is_(None)).limit(1)
            )
            return found is not None
