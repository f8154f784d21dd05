"""Dead letters: node executions that failed after their last attempt with no error edge to
catch them. Listed, retried (the run executes again), dismissed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from api.auth import Owner
from api.deps import RunsDep
from api.pagination import NO_NUL, Paged, link_next, list_responses
from api.schemas import DeadLetterOut, ErrorBody, ExecutionAccepted
from store.lists import dead_letters_page
from store.queries import DeadLetter

router = APIRouter(tags=["dead letters"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 404, 409, 422, 503)}


def _out(letter: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        id=letter.id,
        execution_id=letter.run_id,
        workflow_id=letter.workflow_id,
        node_id=letter.node_id,
        path=list(letter.path),
        error=letter.error,
        attempts=letter.attempts,
        config=letter.config,
        failed_at=letter.failed_at,
    )


@router.get("/api/dead-letters", response_model=list[DeadLetterOut], responses=list_responses(ERRORS))
async def list_dead_letters(
    request: Request,
    response: Response,
    owner: Owner,
    runs: RunsDep,
    paged: Paged,
    workflow_id: str | None = Query(None, max_length=36, pattern=NO_NUL),
) -> list[DeadLetterOut]:
    """Dead letters of the owner, newest first, a page at a time (the next in the ``Link`` header)."""
    page = await dead_letters_page(
        runs.outcomes.sessions, owner, workflow_id=workflow_id, limit=paged.limit, cursor=paged.cursor
    )
    link_next(request, response, page.next_cursor)
    return [_out(letter) for letter in page.items]


@router.post(
    "/api/dead-letters/{dead_letter_id}/retry", status_code=202, response_model=ExecutionAccepted, responses=ERRORS
)
async def retry_dead_letter(dead_letter_id: str, owner: Owner, runs: RunsDep) -> ExecutionAccepted:
    """Retry the run the dead letter belongs to (``POST /api/executions/{id}/retry``)."""
    letter = await runs.outcomes.dead_letter(owner, dead_letter_id)
    status = await runs.retry(owner, letter.run_id, None)
    return ExecutionAccepted(execution_id=letter.run_id, status=status, links=runs.links(letter.run_id))


@router.delete("/api/dead-letters/{dead_letter_id}", status_code=204, responses=ERRORS)
async def dismiss_dead_letter(dead_letter_id: str, owner: Owner, runs: RunsDep) -> None:
    await runs.outcomes.dismiss(owner, dead_letter_id)
