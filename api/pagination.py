"""The query parameters every list takes (``limit``, ``cursor``) and its ``Link`` header.

Lists stay JSON arrays (what clients already read); the next page is in
``Link: </api/...?cursor=...>; rel="next"``, absent on the last page. The cursor is opaque:
a client passes it back as it got it (``store.pagination``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Response

from store.pagination import DEFAULT_LIMIT, MAX_LIMIT

LINK_HEADER = {
    "Link": {
        "description": 'The next page, when there is one: `<path?...&cursor=...>; rel="next"`.',
        "schema": {"type": "string"},
    }
}
"""The list routes' documented response header (OpenAPI)."""


NO_NUL = r"^[^\x00]*$"
"""A text filter's pattern: PostgreSQL refuses NUL characters in text (a 422 here, not a 500 there)."""


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


def page_params(
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"At most this many (1 to {MAX_LIMIT})."),
    cursor: str | None = Query(
        None, max_length=1000, description="Where the page starts: the cursor of the previous page's Link header."
    ),
) -> PageParams:
    return PageParams(limit, cursor)


Paged = Annotated[PageParams, Depends(page_params)]


def link_next(request: Request, response: Response, next_cursor: str | None) -> None:
    """Set the ``Link`` header of the next page (the same query, the next cursor)."""
    if next_cursor is None:
        return
    url = request.url.include_query_params(cursor=next_cursor)
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'


def list_responses(errors: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """``errors`` plus the 200's ``Link`` header, for a list route's ``responses``."""
    return errors | {200: {"headers": LINK_HEADER}}
