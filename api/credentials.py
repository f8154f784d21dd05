"""Credentials of the owner (platform contract section 2): values go in, never come out.

A node names a credential (``data.credential``); the worker reads its values inside the
node's handler (``node_handlers.credentials``). These routes only store, describe, rotate
and delete them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from api.auth import Owner
from api.pagination import Paged, link_next, list_responses
from api.schemas import CredentialBody, CredentialOut, CredentialRotation, ErrorBody
from store.credentials import Credential, Credentials

router = APIRouter(prefix="/api/credentials", tags=["credentials"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {
        401: "No or an unknown bearer API key",
        404: "No credential of this id for the key's owner",
        409: "The owner has a credential of this name already",
        422: "The body does not fit: the issues name the field (a type's missing or unknown field included)",
        503: "The database is unavailable",
    }
    return {code: {"model": ErrorBody, "description": why[code]} for code in codes}


def get_credentials(request: Request) -> Credentials:
    credentials: Credentials = request.app.state.credentials
    return credentials


CredentialsDep = Annotated[Credentials, Depends(get_credentials)]


def _out(credential: Credential) -> CredentialOut:
    return CredentialOut(
        id=credential.id,
        name=credential.name,
        type=credential.type,
        description=credential.description,
        fields=list(credential.fields),
        created_at=credential.created_at,
        updated_at=credential.updated_at,
        last_used_at=credential.last_used_at,
    )


@router.post("", status_code=201, response_model=CredentialOut, responses=_errors(401, 409, 422, 503))
async def create_credential(body: CredentialBody, owner: Owner, credentials: CredentialsDep) -> CredentialOut:
    """Store a credential; the answer names its fields, never their values."""
    new = body.root
    data = new.data if isinstance(new.data, dict) else new.data.model_dump()
    return _out(await credentials.create(owner, new.name, new.type, data, new.description, actor=owner))


@router.get("", response_model=list[CredentialOut], responses=list_responses(_errors(401, 422, 503)))
async def list_credentials(
    request: Request, response: Response, owner: Owner, credentials: CredentialsDep, paged: Paged
) -> list[CredentialOut]:
    """The owner's credentials by name, without values, a page at a time (the next in the ``Link`` header)."""
    page = await credentials.page(owner, limit=paged.limit, cursor=paged.cursor)
    link_next(request, response, page.next_cursor)
    return [_out(credential) for credential in page.items]


@router.get("/{credential_id}", response_model=CredentialOut, responses=_errors(401, 404, 503))
async def get_credential(credential_id: str, owner: Owner, credentials: CredentialsDep) -> CredentialOut:
    return _out(await credentials.get(owner, credential_id))


@router.put("/{credential_id}", response_model=CredentialOut, responses=_errors(401, 404, 422, 503))
async def rotate_credential(
    credential_id: str, body: CredentialRotation, owner: Owner, credentials: CredentialsDep
) -> CredentialOut:
    """New values (every field of its type): the next node execution that names it uses them."""
    return _out(await credentials.rotate(owner, credential_id, body.data, body.description, actor=owner))


@router.delete("/{credential_id}", status_code=204, responses=_errors(401, 404, 503))
async def delete_credential(credential_id: str, owner: Owner, credentials: CredentialsDep) -> Response:
    """Delete it: nodes that name it fail from their next execution on, saying so."""
    await credentials.delete(owner, credential_id, actor=owner)
    return Response(status_code=204)
