"""Streams of quiet runs ask Prefect nothing each: one ``RunEndWatcher`` per API process reads
the states of all their runs in one request per interval (api/run_end_watcher.py), and a run
that ends without its final event still ends its streams with a reconciled final event.

The app runs in this process against the session's real Prefect server, on a work pool no
worker polls: its runs stay queued, and write no event, until the test cancels them in Prefect.
Every Prefect call of the API goes through its ``PrefectGateway``, whose calls are counted.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelled

from api.app import create_app
from api.settings import ApiSettings
from tests.support import execute, flow_run_of, hello, save, wait_final

pytestmark = pytest.mark.prefect
KEY = "watcher-key"
INTERVAL_S = 0.5
STREAMS = 12
WATCHER_READ = "read the states of streamed runs"


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of a whole SSE answer, as {"id", "event", "data"}."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append(fields)
    return events


async def wait_until(condition, what: str, within: float = 120.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
async def api(tmp_path, prefect_server):
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'api.db'}",
        api_keys=f"watcher:{KEY}",
        home=tmp_path,
        work_pool=f"unpolled-{uuid.uuid4().hex[:8]}",  # no worker: runs stay queued, quiet
        stream_end_check_s=INTERVAL_S,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        calls: Counter[str] = Counter()
        gateway = app.state.prefect
        passed_on = gateway.call

        async def counted(what, call):
            calls[what] += 1
            return await passed_on(what, call)

        gateway.call = counted  # the watcher and the runs service share this gateway
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {KEY}"}, timeout=120
        ) as client:
            yield client, app, calls


async def test_streams_of_quiet_runs_cost_one_prefect_read_per_interval_and_end_reconciled(api):
    client, app, calls = api
    workflow = (await save(client, hello(f"quiet-{uuid.uuid4().hex[:6]}")))["id"]
    runs = [await execute(client, workflow, {"who": "x"}) for _ in range(STREAMS - 1)]
    # The API creates their flow runs after its answers: counted from when they all exist.
    flow_runs = [await flow_run_of(client, run) for run in runs]
    streamed = runs + runs[:1]  # two streams of one run
    watcher = app.state.run_ends
    streams = [asyncio.create_task(client.get(f"/api/executions/{run}/stream")) for run in streamed]
    try:
        await wait_until(lambda: watcher.watching == len(runs), "every stream registered")
        before = dict(calls)
        started = time.monotonic()
        await wait_until(lambda: calls[WATCHER_READ] >= before.get(WATCHER_READ, 0) + 12, "twelve watcher reads")
        elapsed = time.monotonic() - started
        during = calls - Counter(before)
        # One request per interval for all twelve streams (the loop sleeps an interval between
        # requests, so never more), and no stream asked Prefect on its own.
        assert set(during) == {WATCHER_READ}, during
        assert during[WATCHER_READ] <= elapsed / INTERVAL_S + 2, (during, elapsed)
        assert not any(stream.done() for stream in streams)

        # Cancelled in Prefect, before any worker took them: no final event is ever written,
        # and every stream ends with what Prefect says.
        async with get_client() as prefect:
            for flow_run in flow_runs:
                await prefect.set_flow_run_state(uuid.UUID(flow_run), Cancelled(), force=True)
        async with asyncio.timeout(120):
            answers = await asyncio.gather(*streams)
    finally:
        for stream in streams:
            stream.cancel()
    for run, answer in zip(streamed, answers, strict=True):
        assert answer.status_code == 200, answer.text
        events = sse_events(answer.text)
        assert [e["event"] for e in events] == ["execution:cancelled"], answer.text
        data = json.loads(events[0]["data"])
        assert data["execution_id"] == run and data["status"] == "cancelled" and data["reconciled"] is True

    # No stream left: the watcher stops asking.
    await wait_until(lambda: watcher.watching == 0, "every stream forgotten")
    settled = calls[WATCHER_READ]
    await asyncio.sleep(4 * INTERVAL_S)
    assert calls[WATCHER_READ] <= settled + 1  # at most the request under way when the last one left


def chain(*nodes: dict) -> dict:
    """start -> nodes... in order."""
    all_nodes = [{"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {}}]
    all_nodes += [{"position": {"x": 220 * i, "y": 0}, **n} for i, n in enumerate(nodes, 1)]
    edges = [
        {"id": f"e{i}", "source": a["id"], "target": b["id"]} for i, (a, b) in enumerate(zip(all_nodes, all_nodes[1:]))
    ]
    return {"nodes": all_nodes, "edges": edges}


async def test_a_retried_runs_stream_goes_on_to_the_retrys_end(served):
    """A stream opened after a retry replays the failed execution and ends at the retry's own
    final event, not at the first one, nor at the end Prefect had for the run before."""
    slow = {"id": "slow", "type": "delay", "data": {"seconds": 6.0}}  # longer than the watcher's interval
    boom = {"id": "boom", "type": "transform", "data": {"output": "{{ 1 // 0 }}"}}
    auth = {"Authorization": f"Bearer {served.owner_key}"}
    async with httpx.AsyncClient(base_url=served.base, headers=auth, timeout=120) as client:
        saved = await save(client, {"name": f"retry-{uuid.uuid4().hex[:6]}", **chain(slow, boom)}, deployed=False)
        run = await execute(client, saved["id"])
        assert (await wait_final(client, run, timeout=120))["status"] == "failed"
        retried = await client.post(f"/api/executions/{run}/retry")
        assert retried.status_code == 202, retried.text
        answer = await client.get(f"/api/executions/{run}/stream")
        final = (await client.get(f"/api/executions/{run}")).json()
    events = sse_events(answer.text)
    types = [e["event"] for e in events]
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1)), types
    assert types.count("execution:failed") == 2, types
    assert types.index("execution:retried") == types.index("execution:failed") + 1, types
    assert types[-1] == "execution:failed" and "reconciled" not in events[-1]["data"], types
    assert final["status"] == "failed" and final["retries"] == 1, final
