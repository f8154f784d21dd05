"""Keyset pagination for every list: a page is the rows after a cursor in a fixed order.

A cursor is opaque to clients: the sort key and the id of the last row of a page, as JSON in
URL-safe base64. Keyset rather than offsets: a page deep in 100,000 runs costs what the first
does (an index range scan), and rows added meanwhile neither repeat nor shift a page.

Generic: a list names its sort column and its unique id column, ``keyset`` orders and bounds
the query, ``page_of`` cuts the rows read into the page and the next cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from store.database import as_utc
from store.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Row = TypeVar("Row")


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after the row with this sort key and id."""

    key: Any
    id: str

    def encode(self) -> str:
        key = as_utc(self.key).isoformat() if isinstance(self.key, datetime) else self.key
        text = json.dumps([key, self.id], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def utc(moment: datetime) -> datetime:
    """A filter's moment in UTC, as rows are stored (a naive one is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bad_cursor(why: str) -> Invalid:
    return Invalid(
        f"cursor: {why}; pass the cursor of a Link header's next page as it is",
        [{"code": "invalid_cursor", "field": "query.cursor", "message": why}],
    )


def decode_cursor(text: str | None, *, key_is_time: bool = True) -> Cursor | None:
    """The cursor a client sent back (None for the first page); ``Invalid`` (422 naming
    ``query.cursor``) for anything this module did not write."""
    if text is None or text == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        key, row_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_cursor("not a cursor of this API") from None
    if not isinstance(row_id, str) or len(row_id) > 255 or "\x00" in row_id:
        raise bad_cursor("not a cursor of this API")
    if key_is_time:
        if not isinstance(key, str):
            raise bad_cursor("not a cursor of this list")
        try:
            moment = datetime.fromisoformat(key)
        except ValueError:
            raise bad_cursor("not a cursor of this list") from None
        key = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    elif not isinstance(key, str | int) or (isinstance(key, str) and "\x00" in key):
        raise bad_cursor("not a cursor of this list")
    return Cursor(key, row_id)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(
            f"limit: must be from 1 to {MAX_LIMIT}",
            [{"code": "invalid_limit", "field": "query.limit", "message": f"from 1 to {MAX_LIMIT}, not {limit}"}],
        )
    return limit


def keyset(
    query: Select[Any],
    sort: InstrumentedAttribute[Any],
    unique: InstrumentedAttribute[Any],
    cursor: Cursor | None,
    limit: int,
    *,
    descending: bool = True,
) -> Select[Any]:
    """``query`` ordered by (``sort``, ``unique``), after ``cursor``, one row more than
    ``limit`` (whether a next page exists, without counting)."""
    if cursor is not None:
        # A row value comparison, not (a < x OR a = x AND b < y): PostgreSQL reads it as one
        # range of the (..., sort, unique) index; SQLite has row values since 3.15.
        row, key = tuple_(sort, unique), tuple_(literal(cursor.key, sort.type), literal(cursor.id, unique.type))
        query = query.where(row < key if descending else row > key)
    order = (sort.desc(), unique.desc()) if descending else (sort.asc(), unique.asc())
    return query.order_by(*order).limit(limit + 1)


@dataclass(frozen=True)
class Page(Generic[Row]):
    items: list[Row]
    next_cursor: str | None
    """None on the last page."""


def page_of(rows: Sequence[Row], limit: int, key_of: Callable[[Row], tuple[Any, str]]) -> Page[Row]:
    """The first ``limit`` of ``rows`` (read with ``keyset``) and the cursor after them."""
    items = list(rows[:limit])
    if len(rows) <= limit or not items:
        return Page(items, None)
    key, row_id = key_of(items[-1])
    return Page(items, Cursor(key, row_id).encode())
