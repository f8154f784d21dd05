"""Typed dependencies of the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.runs import RunService


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


def get_runs(request: Request) -> RunService:
    return request.app.state.runs


SessionDep = Annotated[AsyncSession, Depends(get_session)]
RunsDep = Annotated[RunService, Depends(get_runs)]
