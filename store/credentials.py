"""Credentials owners store for their nodes (an API key, a bearer token, a password...).

Values are write-only: they go in through ``create`` and ``rotate``, sealed with the secret
key ring (``store.secrets``), and come out only through ``read``, which a worker calls inside
the handler of a node that names the credential, in the run owner's namespace. Everything
else (``list``, ``get``) answers what a credential is, never what it holds.

``last_used_at`` is maintained without a write per node execution: ``read`` writes it only
when the stored one is older than ``touch_every`` (whichever process reads).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import audit
from store.database import as_utc
from store.db import CredentialRow, Sessions, WebhookRow, utcnow
from store.errors import Conflict, Invalid, NotFound
from store.pagination import Page, decode_cursor, keyset, page_of
from store.secrets import SecretBox

CredentialType = Literal["api_key", "bearer", "basic", "header", "custom"]
CREDENTIAL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
FIELDS_OF_TYPE: dict[str, tuple[str, ...]] = {
    "api_key": ("api_key",),
    "bearer": ("token",),
    "basic": ("username", "password"),
    "header": ("name", "value"),
}
"""The fields each type requires, and the only ones it takes; ``custom`` takes any."""
CUSTOM_FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"
"""An HTTP header name (RFC 9110 token): the ``name`` of a header credential."""
MAX_FIELDS = 32
MAX_VALUE_CHARS = 16_384
TOUCH_EVERY = timedelta(seconds=60)


@dataclass(frozen=True)
class Credential:
    """A credential as the API shows it: what it is, never what it holds."""

    id: str
    owner: str
    name: str
    type: str
    description: str
    fields: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class CredentialValue:
    """A credential with its values, for the handler of a node that uses it."""

    name: str
    type: str
    data: Mapping[str, str] = field(repr=False)

    def values(self) -> list[str]:
        """What to redact wherever the node's work could echo it."""
        return [value for value in self.data.values() if value]


def check_data(credential_type: str, data: Mapping[str, Any]) -> dict[str, str]:
    """``data`` as a credential of ``credential_type`` holds it; ``Invalid`` naming each field
    that is missing, unknown or not a non-empty string (never its value)."""
    issues: list[dict[str, Any]] = []

    def issue(name: str, why: str) -> None:
        issues.append({"code": "invalid_credential", "field": f"data.{name}", "message": f"data.{name}: {why}"})

    required = FIELDS_OF_TYPE.get(credential_type)
    if required is None:
        if not data:
            issues.append(
                {"code": "invalid_credential", "field": "data", "message": "data: a custom credential needs a field"}
            )
        if len(data) > MAX_FIELDS:
            issues.append(
                {"code": "invalid_credential", "field": "data", "message": f"data: at most {MAX_FIELDS} fields"}
            )
    else:
        for name in required:
            if name not in data:
                issue(name, f"required by a {credential_type} credential")
    for name, value in data.items():
        if required is not None and name not in required:
            issue(name, f"not a field of a {credential_type} credential (its fields: {', '.join(required)})")
        elif required is None and not re.match(CUSTOM_FIELD_PATTERN, name):
            issue(name[:64], "field names are letters, digits and underscores (at most 64)")
        elif not isinstance(value, str) or not value:
            issue(name, "must be a non-empty string")
        elif len(value) > MAX_VALUE_CHARS:
            issue(name, f"longer than {MAX_VALUE_CHARS} characters")
        elif credential_type == "header" and name == "name" and not re.match(HEADER_NAME_PATTERN, value):
            issue(name, "not an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
        elif "\r" in value or "\n" in value:
            issue(name, "holds a line break (it would split an HTTP header)")
    if issues:
        raise Invalid(f"invalid {credential_type} credential: {issues[0]['message']}", issues)
    return {name: str(value) for name, value in data.items()}


def _credential(row: CredentialRow) -> Credential:
    return Credential(
        id=row.id,
        owner=row.owner,
        name=row.name,
        type=row.type,
        description=row.description,
        fields=tuple(row.fields),
        created_at=row.created_at,
        updated_at=row.updated_at,
        last_used_at=row.last_used_at,
    )


class Credentials:
    """The credentials table, every call within one owner's namespace."""

    def __init__(self, sessions: Sessions, box: SecretBox, touch_every: timedelta = TOUCH_EVERY):
        """``touch_every``: how stale ``last_used_at`` may get before a read writes it again."""
        self.sessions, self.box, self.touch_every = sessions, box, touch_every

    def _seal(self, data: Mapping[str, str]) -> str:
        return self.box.seal(json.dumps(dict(data), sort_keys=True))

    async def create(
        self,
        owner: str,
        name: str,
        credential_type: str,
        data: Mapping[str, Any],
        description: str = "",
        *,
        actor: str | None = None,
    ) -> Credential:
        """``actor``: who stores it, recorded in the audit log (name, type and fields: never
        values) in the same transaction."""
        values = check_data(credential_type, data)
        now = utcnow()
        row = CredentialRow(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            type=credential_type,
            description=description,
            fields=sorted(values),
            data_encrypted=self._seal(values),
            created_at=now,
            updated_at=now,
            last_used_at=None,
        )
        async with self.sessions() as session:
            session.add(row)
            self._audit(session, owner, actor, "credential.create", row)
            try:
                await session.commit()
            except IntegrityError as exc:
                await session.rollback()
                raise Conflict(f"a credential named {name!r} already exists") from exc
        return _credential(row)

    async def list(self, owner: str) -> list[Credential]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(CredentialRow).where(CredentialRow.owner == owner).order_by(CredentialRow.name)
            )
            return [_credential(row) for row in rows]

    async def page(self, owner: str, *, limit: int, cursor: str | None = None) -> Page[Credential]:
        """The owner's credentials by name, a page after ``cursor``."""
        query = keyset(
            select(CredentialRow).where(CredentialRow.owner == owner),
            CredentialRow.name,
            CredentialRow.id,
            decode_cursor(cursor, key_is_time=False),
            limit,
            descending=False,
        )
        async with self.sessions() as session:
            rows = list(await session.scalars(query))
        page = page_of(rows, limit, lambda row: (row.name, row.id))
        return Page([_credential(row) for row in page.items], page.next_cursor)

    @staticmethod
    def _audit(session: AsyncSession, owner: str, actor: str | None, action: str, row: CredentialRow) -> None:
        if actor is not None:
            audit.record(
                session,
                owner=owner,
                actor=actor,
                action=action,
                target_type="credential",
                target_id=row.id,
                details={"name": row.name, "type": row.type, "fields": list(row.fields)},
            )

    async def get(self, owner: str, credential_id: str) -> Credential:
        async with self.sessions() as session:
            return _credential(await _owned(session, owner, credential_id))

    async def rotate(
        self,
        owner: str,
        credential_id: str,
        data: Mapping[str, Any],
        description: str | None = None,
        *,
        actor: str | None = None,
    ) -> Credential:
        """New values (all of them) for the credential: the next node execution uses them."""
        async with self.sessions() as session:
            row = await _owned(session, owner, credential_id)
            values = check_data(row.type, data)
            row.fields, row.data_encrypted, row.updated_at = sorted(values), self._seal(values), utcnow()
            if description is not None:
                row.description = description
            self._audit(session, owner, actor, "credential.rotate", row)
            await session.commit()
            return _credential(row)

    async def delete(self, owner: str, credential_id: str, *, actor: str | None = None) -> None:
        async with self.sessions() as session:
            row = await _owned(session, owner, credential_id)
            self._audit(session, owner, actor, "credential.delete", row)
            await session.delete(row)
            await session.commit()

    async def names(self, owner: str) -> set[str]:
        """The names of ``owner``'s credentials (to check what a workflow names)."""
        async with self.sessions() as session:
            return set(await session.scalars(select(CredentialRow.name).where(CredentialRow.owner == owner)))

    async def read(self, owner: str, name: str) -> CredentialValue:
        """The credential ``name`` of ``owner`` with its values; ``NotFound`` when ``owner``
        has none of that name (another owner's is not found either)."""
        async with self.sessions() as session:
            row = await session.scalar(
                select(CredentialRow).where(CredentialRow.owner == owner, CredentialRow.name == name)
            )
            if row is None:
                raise NotFound(f"credential {name!r} not found")
            data = json.loads(self.box.open(row.data_encrypted))
            now = utcnow()
            if row.last_used_at is None or as_utc(row.last_used_at) < now - self.touch_every:
                await session.execute(update(CredentialRow).where(CredentialRow.id == row.id).values(last_used_at=now))
                await session.commit()
        return CredentialValue(name=row.name, type=row.type, data=data)


async def _owned(session: AsyncSession, owner: str, credential_id: str) -> CredentialRow:
    row = await session.get(CredentialRow, credential_id)
    if row is None or row.owner != owner:
        raise NotFound(f"credential {credential_id} not found")
    return row


@dataclass(frozen=True)
class ResealCount:
    webhooks: int
    credentials: int


async def reseal_all(
    sessions: Sessions, webhook_box: SecretBox, credential_box: SecretBox, batch: int = 200
) -> ResealCount:
    """Encrypt every stored secret (webhook secrets, credentials) again under the first key
    of its box's ring, so that the ring's other keys can be retired. ``ValueError`` naming
    the row when a secret opens with no key of the ring (its batch is not written)."""
    webhooks = await _reseal_table(sessions, webhook_box, WebhookRow, "secret_encrypted", batch)
    credentials = await _reseal_table(sessions, credential_box, CredentialRow, "data_encrypted", batch)
    return ResealCount(webhooks=webhooks, credentials=credentials)


async def _reseal_table(
    sessions: Sessions, box: SecretBox, table: type[WebhookRow] | type[CredentialRow], column: str, batch: int
) -> int:
    done, after = 0, ""
    while True:
        async with sessions() as session:
            rows: list[WebhookRow | CredentialRow] = list(
                await session.scalars(select(table).where(table.id > after).order_by(table.id).limit(batch))
            )
            if not rows:
                return done
            for row in rows:
                try:
                    setattr(row, column, box.reseal(getattr(row, column)))
                except ValueError as exc:
                    raise ValueError(f"{table.__tablename__} row {row.id}: {exc}") from None
            await session.commit()
        done += len(rows)
        after = rows[-1].id
