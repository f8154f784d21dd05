"""Owners' API keys, managed with the admin key (``FLOWMAESTRO_ADMIN_KEY``): a new tenant or
a new key without restarting anything. A key is shown once, when it is created; the store
keeps its SHA-256 only. Keys of ``FLOWMAESTRO_API_KEYS`` keep working beside these and are
not listed here (they are the operator's configuration)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import require_admin
from api.schemas import ErrorBody, RequestBody, Timestamp
from store.api_keys import ApiKey, ApiKeys

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403, 404, 422, 503)}
router = APIRouter(prefix="/api/admin/keys", tags=["admin"], dependencies=[Depends(require_admin)])


class KeyBody(RequestBody):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"owner": "acme", "name": "ci"}]})
    owner: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    name: str = Field(min_length=1, max_length=200, description="What the key is for (shown in lists).")


class KeyOut(BaseModel):
    id: str
    owner: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it.")
    created_at: Timestamp
    last_used_at: Timestamp | None = Field(None, description="Recorded at most once a minute.")
    revoked_at: Timestamp | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="Shown once: send it as 'Authorization: Bearer <key>'.")


def _api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


KeysDep = Annotated[ApiKeys, Depends(_api_keys)]


def _out(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "owner": key.owner,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    }


@router.post("", status_code=201, response_model=KeyCreated, responses=ERRORS)
async def create_key(body: KeyBody, keys: KeysDep) -> KeyCreated:
    """A new key of ``owner`` (a new owner needs nothing more); it works at once."""
    stored, key = await keys.create(body.owner, body.name)
    return KeyCreated(**_out(stored), key=key)


@router.get("", response_model=list[KeyOut], responses=ERRORS)
async def list_keys(
    keys: KeysDep,
    owner: str | None = Query(None, max_length=128, description="Only this owner's keys."),
    include_revoked: bool = Query(False, description="Revoked keys too."),
) -> list[KeyOut]:
    return [KeyOut(**_out(k)) for k in await keys.list(owner, include_revoked)]


@router.delete("/{key_id}", status_code=204, responses=ERRORS)
async def revoke_key(key_id: str, keys: KeysDep) -> Response:
    """Revoke a key: it stops working at once (its stream tokens too, unless the owner has another)."""
    await keys.revoke(key_id)
    return Response(status_code=204)
