"""What the tests of workflow management share (tests/test_pagination.py,
tests/test_workflow_metadata.py, tests/test_audit.py): a scratch PostgreSQL database, an app
on a database with fresh owners, and reading ``Link`` headers."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api.app import create_app
from api.settings import ApiSettings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
LINK = re.compile(r'^<([^>]+)>; rel="next"$')


@asynccontextmanager
async def scratch_postgres(prefix: str) -> AsyncIterator[str]:
    """A new PostgreSQL database for the module, dropped after it."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def api_client(url: str, home: Path, pool: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app on ``url`` with two fresh owners: the client is the first's (``client.owner``),
    ``client.other`` the other's headers, ``client.app`` the app."""
    owner, other = f"owner-{uuid.uuid4().hex[:12]}", f"other-{uuid.uuid4().hex[:12]}"
    owner_key, other_key = f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"
    app = create_app(
        ApiSettings(
            database_url=url,
            api_keys=f"{owner}:{owner_key},{other}:{other_key}",
            home=home,
            work_pool=pool,
            **settings,
        )
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {owner_key}"},
            timeout=60,
        ) as client:
            client.owner = owner  # type: ignore[attr-defined]
            client.other = {"Authorization": f"Bearer {other_key}"}  # type: ignore[attr-defined]
            client.app = app  # type: ignore[attr-defined]
            yield client


def next_link(response: httpx.Response) -> str | None:
    """The path and query of the ``Link: <...>; rel="next"`` header, or None."""
    header = response.headers.get("link")
    if header is None:
        return None
    found = LINK.match(header)
    assert found, f"not a next link: {header!r}"
    return found.group(1)


async def every_page(client: httpx.AsyncClient, path: str, **params: Any) -> list[list[dict[str, Any]]]:
    """Each page of a list, following its Link headers from ``path``."""
    pages = []
    answer = await client.get(path, params=params)
    while True:
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json(), list)
        pages.append(answer.json())
        link = next_link(answer)
        if link is None:
            return pages
        answer = await client.get(link)
