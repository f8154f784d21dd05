"""Alembic environment: runs migrations with the app's async engine."""

from __future__ import annotations

import asyncio

from alembic import context

from store.db import Base, make_engine

target_metadata = Base.metadata


def _include(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    # fm_events belongs to the event log (flows/event_log), which manages it itself.
    return not (type_ == "table" and name == "fm_events")


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, include_object=_include
    )
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    # No statement timeout: a migration of a big table may rightly take minutes.
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "alembic.ini or the caller sets sqlalchemy.url"
    engine = make_engine(url, command_timeout_s=None)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
