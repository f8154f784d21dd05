"""``GET /api/audit``: the owner's audit log, newest first. Read only: no route changes or
deletes an entry (``store.audit``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from api.auth import Owner
from api.executions import Rfc3339
from api.pagination import NO_NUL, Paged, link_next, list_responses
from api.schemas import ErrorBody, Timestamp
from store.audit import ACTIONS, AuditLog
from store.errors import Invalid

router = APIRouter(prefix="/api/audit", tags=["audit"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 422, 503)}


def get_audit(request: Request) -> AuditLog:
    log: AuditLog = request.app.state.audit
    return log


AuditDep = Annotated[AuditLog, Depends(get_audit)]


class AuditEntryOut(BaseModel):
    id: str
    at: Timestamp
    actor: str
    """The owner of the API key that made the change."""
    action: str
    target_type: str
    target_id: str
    details: dict[str, Any]


@router.get("", response_model=list[AuditEntryOut], responses=list_responses(ERRORS))
async def list_audit(
    request: Request,
    response: Response,
    owner: Owner,
    log: AuditDep,
    paged: Paged,
    action: str | None = Query(None, max_length=64, description="Entries of this action (e.g. workflow.update)."),
    target_id: str | None = Query(None, max_length=255, pattern=NO_NUL, description="Entries about this object."),
    since: Rfc3339 | None = Query(None, description="Entries at or after this time (RFC 3339)."),
) -> list[AuditEntryOut]:
    """Who did what to the owner's workflows, runs, credentials, schedules and webhooks,
    newest first, a page at a time (the next in the ``Link`` header)."""
    if action is not None and action not in ACTIONS:
        raise Invalid(
            f"action: {action!r} is no audit action; one of {', '.join(sorted(ACTIONS))}",
            [{"code": "invalid_request", "field": "query.action", "message": f"{action!r} is no audit action"}],
        )
    moment: datetime | None = since
    page = await log.list(
        owner, action=action, target_id=target_id, since=moment, limit=paged.limit, cursor=paged.cursor
    )
    link_next(request, response, page.next_cursor)
    return [AuditEntryOut.model_validate(entry, from_attributes=True) for entry in page.items]
