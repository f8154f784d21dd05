"""End to end through a real `flowmaestro serve` process (uvicorn, and the worker process
it starts): save, execute, read, and the Server-Sent Events stream with Redis and with the
SQL event log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests import support
from tests.openai_server import FakeOpenAI
from tests.processes import free_port

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
ROOT = Path(__file__).resolve().parent.parent
KEY = "sse-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fake_llm():
    with FakeOpenAI().running() as server:
        yield server


@pytest.fixture(scope="module", params=["redis", "sql"])
def served(request, tmp_path_factory, prefect_server, fake_llm):
    """A `flowmaestro serve` process, with Redis or with the SQL event log."""
    home = tmp_path_factory.mktemp(f"serve-{request.param}")
    port = free_port()
    env = dict(
        os.environ,
        FLOWMAESTRO_API_KEYS=f"tester:{KEY}",
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'api.db'}",
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        OPENAI_API_KEY="sk-test-secret",
        FLOWMAESTRO_OPENAI_BASE_URL=fake_llm.base_url,  # the operator's key goes there only
        # The session's Prefect server is on SQLite and busy after the fan-out tests.
        FLOWMAESTRO_PREFECT_TIMEOUT_S="60",
    )
    env.pop("FLOWMAESTRO_REDIS_URL", None)
    if request.param == "redis":
        env["FLOWMAESTRO_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        time.sleep(0.3)
    else:
        raise AssertionError("flowmaestro serve did not become healthy")
    yield base
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: a clean shutdown
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("flowmaestro serve did not stop on Ctrl-C") from None


async def save_and_execute(client: httpx.AsyncClient, raw: dict, inputs: dict | None = None) -> str:
    # Saving creates a Prefect deployment: after the fan-out tests the session's Prefect
    # server (SQLite) may take tens of seconds to answer; the API waits up to 60 s for it.
    client.timeout = httpx.Timeout(120)
    return await support.save_and_execute(client, raw, inputs, deployed=False)


async def collect(base: str, execution_id: str, *, last_event_id: str | None = None, stop_after: int | None = None):
    headers = dict(AUTH)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    events = []
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(120, connect=10)) as client:
        async with aconnect_sse(client, "GET", f"/api/executions/{execution_id}/stream", headers=headers) as source:
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # httpx-sse reports heartbeat comments as empty events
                events.append((int(sse.id), sse.event, json.loads(sse.data)))
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events


async def test_serve_saves_executes_and_reads_the_result(served):
    raw = {
        "name": f"e2e-{uuid.uuid4().hex[:6]}",
        "inputs": {"n": {"type": "integer", "required": True}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "double", "type": "transform", "data": {"output": "{{ inputs.n * 2 }}"}},
        ],
        "edges": [{"id": "e", "source": "start", "target": "double"}],
    }
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=30) as client:
        execution_id = await save_and_execute(client, raw, {"n": 21})
        for _ in range(300):
            result = (await client.get(f"/api/executions/{execution_id}")).json()
            if result["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
    assert result["status"] == "completed" and result["output"] == {"double": 42}


async def test_fan_out_streamed_to_20_subscribers_each_gets_every_event_once(served):
    raw = {
        "name": f"fanout-{uuid.uuid4().hex[:6]}",
        "settings": {"max_concurrency": 64},
        "nodes": [
            {"id": "fan", "type": "parallel", "data": {"mode": "count", "count": 500}},
            {"id": "work", "type": "transform", "parentId": "fan", "data": {"output": "{{ parallel.index }}"}},
        ],
        "edges": [],
    }
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=30) as client:
        execution_id = await save_and_execute(client, raw)
    streams = await asyncio.gather(*(collect(served, execution_id) for _ in range(20)))
    for events in streams:
        ids = [e[0] for e in events]
        assert ids == sorted(set(ids)) and ids[0] == 1, "ids strictly increasing from 1, no repeats"
        assert ids == list(range(1, len(ids) + 1)), "no gaps"
        node_events = [(e[1], e[2]["node_id"], tuple(e[2]["path"])) for e in events if e[1].startswith("node:")]
        assert len(node_events) == len(set(node_events))
        done = {p for t, n, p in node_events if t == "node:completed" and n == "work"}
        missing = {(i,) for i in range(500)} - done
        assert not missing, [e for e in events if e[2].get("path") in ([p[0]] for p in missing)][:10] + events[-5:]
        assert events[-1][1] == "execution:completed"
    assert len({len(s) for s in streams}) == 1  # everybody saw the same history


async def test_reconnect_with_last_event_id_gets_exactly_the_rest(served):
    raw = {
        "name": f"resume-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "fan", "type": "parallel", "data": {"mode": "count", "count": 50, "max_concurrency": 5}},
            {"id": "wait", "type": "delay", "parentId": "fan", "data": {"seconds": 0.05}},
        ],
        "edges": [],
    }
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=30) as client:
        execution_id = await save_and_execute(client, raw)
    first = await collect(served, execution_id, stop_after=30)
    rest = await collect(served, execution_id, last_event_id=str(first[-1][0]))
    whole = await collect(served, execution_id)
    assert [e[0] for e in first + rest] == [e[0] for e in whole]
    assert rest[0][0] == first[-1][0] + 1 and whole[-1][1] == "execution:completed"


async def test_llm_token_chunks_stream_in_order(served, fake_llm):
    raw = {
        "name": f"llm-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {
                "id": "ask",
                "type": "llm",
                "data": {"model": "text", "prompt": "Say hello", "base_url": fake_llm.base_url},
            }
        ],
        "edges": [],
    }
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=30) as client:
        execution_id = await save_and_execute(client, raw)
    events = await collect(served, execution_id)
    chunks = [e[2] for e in events if e[1] == "stream:chunk"]
    assert len(chunks) >= 2
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    completed = next(e[2] for e in events if e[1] == "node:completed" and e[2]["node_id"] == "ask")
    assert "".join(c["text"] for c in chunks) == completed["output"]["text"]
    assert any(e[1] == "stream:done" for e in events)
    assert "sk-test-secret" not in json.dumps(events)
