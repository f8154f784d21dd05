"""A worker starts a new run when Prefect's event stream says it was scheduled, not at its
next poll; with no event stream it still polls; and a run costs a bounded number of
Prefect requests (counted from the Prefect server's own access log).

A Prefect server of this module's own (on PostgreSQL, access log on), the API
(``flowmaestro serve --workers 0``) and one ``flowmaestro worker`` at a time on the pool.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from deployments.run_wakeups import RunWakeups
from tests.processes import free_port, postgres_database, stack_env, start_serve, start_worker
from tests.support import save

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "wakeups-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LONG_POLL_S = 30.0

REQUESTS_PER_RUN_BOUND = 22
"""Measured 14.2 to 15.6 Prefect requests per run of this 3-node workflow, one worker with its
poll out of the way (docs/performance.md lists them). The margin covers the batched events
and logs and the state watcher's reads, which vary with timing: the bound catches a
regression of about six requests per run, not one of one or two (docs/performance.md and
the benchmark are where those show)."""


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """Prefect on PostgreSQL with uvicorn's access log (INFO): one line per request."""
    from flows.local_server import start_server, stop

    home = tmp_path_factory.mktemp("prefect-wakeups")
    with postgres_database("fm_wakeups_prefect") as url:
        info = start_server(
            home,
            free_port(),
            env={"PREFECT_SERVER_DATABASE_CONNECTION_URL": url, "PREFECT_SERVER_LOGGING_LEVEL": "INFO"},
            auth=False,
            quiet=True,
        )
        try:
            yield info, home / "prefect-server.log"
        finally:
            stop(home)


@pytest.fixture(scope="module")
def database(prefect_server):
    with postgres_database("fm_store") as database_url:
        yield database_url


@pytest.fixture
def stack(tmp_path, prefect_server, database):
    """Each test its own work pool (and API creating its deployments there): one worker on it,
    which answers every run's event (a pool's workers share its runs' events, each answering
    some, ``RunWakeups.answers``; a worker stopped a moment ago still counts)."""
    info, _log = prefect_server
    yield tmp_path, stack_env(tmp_path, info, database, KEY)


@pytest.fixture
def api(stack):
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop()


def greeting(name: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "greet", "type": "transform", "data": {"output": "Hello"}},
            {"id": "end", "type": "end", "data": {"output": "{{ greet }}"}},
        ],
        "edges": [{"id": "e1", "source": "start", "target": "greet"}, {"id": "e2", "source": "greet", "target": "end"}],
    }


async def run_one(http: httpx.AsyncClient, workflow_id: str) -> float:
    """Execute the workflow and follow its event stream to its end (which reads no Prefect
    run state, unlike ``GET /api/executions/{id}``); seconds from the POST to its first
    ``node:started``."""
    started = time.monotonic()
    answer = await http.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {}})
    assert answer.status_code == 202, answer.text
    first_node = None
    async with aconnect_sse(http, "GET", f"/api/executions/{answer.json()['execution_id']}/stream") as source:
        async for event in source.aiter_sse():
            if event.event == "node:started" and first_node is None:
                first_node = time.monotonic() - started
            if event.event in ("execution:completed", "execution:failed", "execution:cancelled"):
                assert event.event == "execution:completed", event.data
                assert first_node is not None
                return first_node
    raise AssertionError("the stream ended without a final event")


def worker(stack, name: str, **env: str):
    home, base_env = stack
    return start_worker(home, {**base_env, **env}, name=f"{name}-{uuid.uuid4().hex[:4]}")


async def test_a_run_starts_on_its_event_well_before_the_next_poll(stack, api):
    """The worker polls every 30 s: three runs one after the other each start their first node
    within 5 s of the execute, which at most one of them could do by meeting a poll."""
    proc = worker(stack, "events", FLOWMAESTRO_WORKER_EVENTS="true", FLOWMAESTRO_WORKER_POLL_S=str(LONG_POLL_S))
    try:
        async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=60) as http:
            saved = await save(http, greeting(f"wake-{uuid.uuid4().hex[:6]}"))
            took = [await run_one(http, saved["id"]) for _ in range(3)]
        assert max(took) < 5, (took, proc.output())
    finally:
        proc.stop()


async def test_without_the_event_stream_the_poll_still_starts_runs(stack, api):
    proc = worker(stack, "poll-only", FLOWMAESTRO_WORKER_EVENTS="false", FLOWMAESTRO_WORKER_POLL_S="1")
    try:
        async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=60) as http:
            saved = await save(http, greeting(f"poll-{uuid.uuid4().hex[:6]}"))
            assert await run_one(http, saved["id"]) < 30
    finally:
        proc.stop()


REQUEST = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def requests_since(log: Path, offset: int) -> Counter[str]:
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return Counter(f"{m.group(1)} {ID.sub('{id}', m.group(2))}" for m in REQUEST.finditer(text))


async def test_a_run_costs_a_bounded_number_of_prefect_requests(stack, api, prefect_server):
    """Runs one after the other, counted from the POST of the first to the end of the last
    (and the summaries the worker sends just after): every Prefect request of the API and the
    worker, with the worker's poll (every 30 s) out of the way."""
    _info, log = prefect_server
    proc = worker(stack, "count", FLOWMAESTRO_WORKER_EVENTS="true", FLOWMAESTRO_WORKER_POLL_S=str(LONG_POLL_S))
    runs = 5
    try:
        async with httpx.AsyncClient(base_url=api, headers=AUTH, timeout=60) as http:
            saved = await save(http, greeting(f"count-{uuid.uuid4().hex[:6]}"))
            await run_one(http, saved["id"])  # warm: the worker's first run reads what it keeps
            offset = log.stat().st_size
            for _ in range(runs):
                await run_one(http, saved["id"])
            await asyncio.sleep(2)  # the batched task-run events and summaries (sent every 0.5 s)
        counted = requests_since(log, offset)
    finally:
        proc.stop()
    per_run = sum(counted.values()) / runs
    print(f"Prefect requests per run: {per_run:.1f}; {dict(counted.most_common())}")
    assert counted["POST /api/deployments/{id}/create_flow_run"] == runs, counted
    assert per_run <= REQUESTS_PER_RUN_BOUND, counted


class FailingThenWorking:
    """An event source that fails to connect ``failures`` times, then names one run."""

    def __init__(self, failures: int) -> None:
        self.failures, self.attempts = failures, 0

    async def __call__(self, pool_id, connected):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionError("refused")
        connected()
        yield "run-1"
        await asyncio.Event().wait()  # stays connected


def test_one_worker_of_the_pool_answers_each_run():
    names = ["w-a", "w-b", "w-c"]
    wakeups = {name: RunWakeups(lambda: None, lambda: None, name=name) for name in names}  # type: ignore[arg-type, return-value]
    for w in wakeups.values():
        w._peers = tuple(names)
    run_ids = [str(uuid.uuid4()) for _ in range(300)]
    answering = [[name for name, w in wakeups.items() if w.answers(run_id)] for run_id in run_ids]
    assert all(len(a) == 1 for a in answering)
    assert {a[0] for a in answering} == set(names), "each worker answers some"
    stray = RunWakeups(lambda: None, lambda: None, name="w-new")  # type: ignore[arg-type, return-value]
    stray._peers = tuple(names)
    assert all(stray.answers(run_id) for run_id in run_ids), "a worker the list does not name yet answers all"


async def test_a_lost_event_stream_is_connected_again_and_wakes_the_poll():
    polled = asyncio.Event()

    async def poll(answers):
        assert answers("run-1")
        polled.set()
        return []

    source = FailingThenWorking(failures=2)
    wakeups = RunWakeups(poll, lambda: "pool", events=source, reconnect_max_s=0.05)
    task = asyncio.create_task(wakeups.run())
    try:
        await asyncio.wait_for(polled.wait(), timeout=30)
        assert source.attempts == 3 and wakeups.connected and wakeups.wakeups == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
