"""The store and the event log say themselves which service is down (issue 21 item 5): a
database or Redis that refuses connections raises ``Unavailable`` naming it from the call
that met it, so the API answers 503 without guessing from a traceback. The services are
ports nobody listens on; the whole outage (a server killed, frozen, back) is
tests/test_failing_services.py's."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest

from flows.event_log import RedisEventLog, SqlEventLog
from flows.events import RunEvent
from store.db import make_engine, sessions
from store.errors import Unavailable
from store.queries import Executions, Workflows
from store.unavailable import database_calls


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def down_database_url() -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/flowmaestro"


async def test_the_store_names_the_database_when_it_refuses_connections(down_database_url):
    engine = make_engine(down_database_url)
    try:
        with pytest.raises(Unavailable) as raised:
            await Workflows(sessions(engine)).list("owner")
        assert raised.value.service == "database" and raised.value.retry_after_s > 0
        with pytest.raises(Unavailable) as raised:
            await Executions(sessions(engine)).get("owner", str(uuid.uuid4()))
        assert raised.value.service == "database"
    finally:
        await engine.dispose()


async def test_the_sql_event_log_names_the_database_when_it_refuses_connections(down_database_url):
    log = SqlEventLog(down_database_url)
    run = str(uuid.uuid4())
    try:
        for call in (
            lambda: log.last_seq(run),
            lambda: log.read(run),
            lambda: log.append([RunEvent(1, "execution:started", run, "2026-01-01T00:00:00+00:00")]),
        ):
            with pytest.raises(Unavailable) as raised:
                await call()
            assert raised.value.service == "database"
    finally:
        await log.close()


async def test_the_redis_event_log_names_redis_when_it_refuses_connections():
    log = RedisEventLog(f"redis://127.0.0.1:{closed_port()}/0")
    run = str(uuid.uuid4())

    async def follow() -> None:
        async for _ in log.follow(run, idle_timeout=1):
            pass

    try:
        # At once: each call tries three times more (about 1.4 s) before it gives up.
        raised = await asyncio.gather(
            log.last_seq(run),
            log.read(run),
            log.append([RunEvent(1, "execution:started", run, "2026-01-01T00:00:00+00:00")]),
            follow(),
            return_exceptions=True,
        )
        assert [(type(e), getattr(e, "service", None)) for e in raised] == [(Unavailable, "redis")] * 4, raised
    finally:
        await log.close()


async def test_other_database_errors_stay_what_they_are():
    class Bug(Exception):
        pass

    with pytest.raises(Bug):
        async with database_calls():
            raise Bug("a query of ours is wrong")
