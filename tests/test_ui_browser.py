"""The /ui pages in headless Chromium (Debian's, driven by Playwright) against a real
`flowmaestro serve` (uvicorn and its worker) on the session's Prefect server, with the
local streaming OpenAI server for tokens.

What the page shows is read from the DOM, not from pixels: every node's ``data-state``
change and token text is recorded by a MutationObserver installed before the page's own
scripts, and read back in order. One server and one browser serve the whole module.
Screenshots go to tests/artifacts/ui/ (printed at the start).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.openai_server import FakeOpenAI, Reply
from tests.processes import free_port, start_serve
from tests.support import flow_run_of, save, save_and_execute, summary_artifact_of, wait_final
from tests.test_prefect_ui import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
KEY = "ui-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"
# Runs before the page's scripts: the key for the session, and a recorder of what the page
# changes, in the order it changes it.
RECORDER = """
sessionStorage.setItem("flowmaestro.apiKey", %s);
window.__seen = [];
new MutationObserver((records) => {
  for (const r of records) {
    const t = r.target;
    if (r.attributeName === "data-state") __seen.push(["state", t.getAttribute("data-node-id"), t.getAttribute("data-state")]);
    else if (r.attributeName === "data-tokens") __seen.push(["tokens", t.getAttribute("data-node-id"), t.getAttribute("data-tokens")]);
    else if (r.type === "characterData" || r.type === "childList") {
      const host = (r.target.nodeType === 3 ? r.target.parentNode : r.target);
      if (host && host.getAttribute && host.getAttribute("data-role") === "progress")
        __seen.push(["progress", host.closest("[data-node-id]").getAttribute("data-node-id"), host.textContent]);
    }
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-state", "data-tokens"],
                      childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def fake_llm():
    with FakeOpenAI().running() as server:
        yield server


class OtherOrigin:
    """A page of another origin (a canvas frontend) that follows a run with a plain EventSource."""

    PAGE = b"""<!doctype html><meta charset="utf-8"><title>frontend</title><script>
window.follow = async (api, key, run) => {
  const answer = await fetch(`${api}/api/executions/${run}/stream-token`,
                             {method: "POST", headers: {Authorization: `Bearer ${key}`}});
  const {token} = await answer.json();
  const events = [];
  return await new Promise((resolve, reject) => {
    const source = new EventSource(`${api}/api/executions/${run}/stream?token=${encodeURIComponent(token)}`);
    for (const type of ["execution:started", "node:started", "node:completed", "execution:completed"])
      source.addEventListener(type, (e) => {
        events.push([Number(e.lastEventId), type]);
        if (type === "execution:completed") { source.close(); resolve(events); }
      });
    source.onerror = () => { if (source.readyState === EventSource.CLOSED) reject(new Error("stream refused")); };
  });
};
</script>"""

    def __init__(self) -> None:
        page = self.PAGE

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def frontend():
    origin = OtherOrigin()
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server, fake_llm, frontend):
    require_chromium()
    import os

    home = tmp_path_factory.mktemp("ui-serve")
    env = dict(
        os.environ,
        FLOWMAESTRO_API_KEYS=f"tester:{KEY}",
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'api.db'}",
        FLOWMAESTRO_REDIS_URL="redis://127.0.0.1:6379/0",
        OPENAI_API_KEY="sk-test-secret",
        FLOWMAESTRO_OPENAI_BASE_URL=fake_llm.base_url,  # the operator's key goes there only
        FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1",
        FLOWMAESTRO_CORS_ORIGINS=frontend.url,
        # The run page links to the run in the Prefect UI only at an address the operator publishes.
        FLOWMAESTRO_PREFECT_PUBLIC_URL=prefect_server.ui_url,
        # The session's Prefect server is on SQLite and may be slow after other modules.
        FLOWMAESTRO_PREFECT_TIMEOUT_S="60",
    )
    proc, base = start_serve(home, env)
    yield base
    proc.stop(60)


@pytest.fixture(scope="module")
async def browser(served):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {ARTIFACTS}")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def context(browser):
    context = await browser.new_context(viewport={"width": 1300, "height": 800}, device_scale_factor=1)
    errors: list[str] = []
    context.on("weberror", lambda e: errors.append(str(e.error)))
    # Console errors too (a Content-Security-Policy violation is one), except the failed
    # requests some tests cause on purpose.
    context.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and not m.text.startswith("Failed to load resource") else None
        ),
    )
    yield context
    await context.close()
    assert not errors, f"errors in the page: {errors}"


async def execute(base: str, raw: dict, inputs: dict | None = None) -> str:
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as client:
        return await save_and_execute(client, raw, inputs, deployed=False)


async def final(base: str, run_id: str) -> dict:
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as client:
        return await wait_final(client, run_id, timeout=120)


async def open_run(context, base: str, run_id: str, *, recorder: bool = True):
    page = await context.new_page()
    if recorder:
        await page.add_init_script(RECORDER % json.dumps(KEY))
    await page.goto(f"{base}/ui/executions/{run_id}")
    await page.wait_for_selector("body[data-painted='true']", timeout=60_000)
    return page


async def caught_up(page) -> None:
    await page.wait_for_selector("body[data-caught-up='true']", timeout=120_000)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def chain(*nodes: dict) -> dict:
    """start -> nodes... in order."""
    all_nodes = [{"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {"label": "Start"}}]
    for i, n in enumerate(nodes, 1):
        all_nodes.append({"position": {"x": 220 * i, "y": 0}, **n})
    edges = [
        {"id": f"e{i}", "source": a["id"], "target": b["id"]} for i, (a, b) in enumerate(zip(all_nodes, all_nodes[1:]))
    ]
    return {"nodes": all_nodes, "edges": edges}


def delay(node_id: str, seconds: float) -> dict:
    return {"id": node_id, "type": "delay", "data": {"label": node_id, "seconds": seconds}}


async def test_node_states_change_in_order_as_the_run_proceeds(served, context):
    # "pre" gives the page time to be live before "a" starts: what follows is seen as it happens.
    raw = {"name": name("ui-order"), **chain(delay("pre", 1.5), delay("a", 0.6), delay("b", 0.6))}
    run_id = await execute(served, raw)
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=60) as client:
        flow_run_id = await flow_run_of(client, run_id)  # the page links to it once it exists
    page = await open_run(context, served, run_id)
    await caught_up(page)
    seen = await page.evaluate("__seen")
    states = [(node, state) for kind, node, state in seen if kind == "state" and node in ("a", "b")]
    assert states == [("a", "running"), ("a", "completed"), ("b", "running"), ("b", "completed")], seen
    for node_id in ("start", "pre", "a", "b"):
        assert await page.get_attribute(f"[data-node-id='{node_id}']", "data-state") == "completed"
    assert await page.text_content("[data-role='run-status']") == "completed"
    colour = await page.eval_on_selector("[data-node-id='a'] rect", "r => getComputedStyle(r).stroke")
    assert colour == "rgb(22, 163, 74)", "completed nodes are drawn green"
    link = await page.get_attribute("[data-role='prefect-link']", "href")
    assert link.endswith(f"/runs/flow-run/{flow_run_id}") and link.startswith("http://127.0.0.1:")
    events = await page.text_content("[data-role='event-count']")
    assert events == f"{await page.get_attribute('body', 'data-last-event-id')} events", "every event once"
    await page.screenshot(path=str(ARTIFACTS / "run-completed.png"))
    # And back: the run's summary in Prefect links to this page (written once the result is out).
    summary = await summary_artifact_of(flow_run_id)
    assert f"[Run page]({served}/ui/executions/{run_id})" in summary, summary


async def test_tokens_stream_into_their_node_and_containers_count_iterations(served, context, fake_llm):
    fake_llm.enqueue(Reply(chunks=["Once ", "upon ", "a ", "time"], chunk_delay_s=0.4))
    raw = {
        "name": name("ui-tokens"),
        "nodes": [
            {"id": "start", "type": "start", "position": {"x": 0, "y": 60}, "data": {}},
            {
                "id": "laps",
                "type": "loop",
                "position": {"x": 200, "y": 0},
                "style": {"width": 220, "height": 130},
                "data": {"label": "Laps", "mode": "for", "count": 4},
            },
            {
                "id": "lap",
                "type": "delay",
                "parentId": "laps",
                "position": {"x": 20, "y": 50},
                "data": {"seconds": 0.3},
            },
            {
                "id": "fan",
                "type": "parallel",
                "position": {"x": 480, "y": 0},
                "style": {"width": 220, "height": 130},
                "data": {"mode": "count", "count": 3},
            },
            {
                "id": "leg",
                "type": "transform",
                "parentId": "fan",
                "position": {"x": 20, "y": 50},
                "data": {"output": "{{ parallel.index }}"},
            },
            {
                "id": "story",
                "type": "llm",
                "position": {"x": 760, "y": 40},
                "data": {"label": "Tell a story", "model": "text", "prompt": "A story", "base_url": fake_llm.base_url},
            },
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "laps"},
            {"id": "e2", "source": "laps", "target": "fan"},
            {"id": "e3", "source": "fan", "target": "story"},
        ],
    }
    run_id = await execute(served, raw)
    page = await open_run(context, served, run_id)
    await caught_up(page)
    seen = await page.evaluate("__seen")
    texts = [value for kind, node, value in seen if kind == "tokens" and node == "story"]
    assert len(texts) >= 3, f"tokens appear as they come: {texts}"
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(texts, texts[1:])), texts
    assert texts[-1] == "Once upon a time"
    assert (await final(served, run_id))["nodes"]["story"]["output"]["text"] == "Once upon a time"
    laps = [value for kind, node, value in seen if kind == "progress" and node == "laps"]
    assert laps[-1] == "iteration 4/4" and "iteration 1/4" in laps, laps
    assert await page.text_content("[data-node-id='fan'] [data-role='progress']") == "3/3 branches done"
    await page.click("[data-node-id='story']")
    assert await page.text_content("[data-role='node-tokens']") == "Once upon a time"
    await page.screenshot(path=str(ARTIFACTS / "run-tokens-and-containers.png"))


async def test_an_approval_answered_on_the_page_resumes_the_run(served, context, fake_llm):
    fake_llm.enqueue(Reply(chunks=["Release ", "notes: ", "all ", "green"]))
    raw = {
        "name": name("ui-approval"),
        "nodes": [
            {"id": "start", "type": "start", "position": {"x": 0, "y": 60}, "data": {"label": "Start"}},
            {
                "id": "checks",
                "type": "loop",
                "position": {"x": 220, "y": 20},
                "style": {"width": 220, "height": 130},
                "data": {"label": "Checks", "mode": "for", "count": 3},
            },
            {
                "id": "check",
                "type": "delay",
                "parentId": "checks",
                "position": {"x": 20, "y": 50},
                "data": {"label": "Run a check", "seconds": 0.1},
            },
            {
                "id": "notes",
                "type": "llm",
                "position": {"x": 450, "y": 60},
                "data": {"label": "Write notes", "model": "text", "prompt": "notes", "base_url": fake_llm.base_url},
            },
            {
                "id": "ask",
                "type": "approval",
                "position": {"x": 655, "y": 60},
                "data": {
                    "label": "Ship it?",
                    "message": "Ship the release?",
                    "form": {
                        "reason": {"type": "string", "required": True, "description": "Why"},
                        "copies": {"type": "integer"},
                    },
                },
            },
            {
                "id": "ship",
                "type": "transform",
                "position": {"x": 860, "y": 0},
                "data": {"label": "Ship", "output": "{{ ask.input.reason }} x{{ ask.input.copies }}"},
            },
            {
                "id": "stop",
                "type": "transform",
                "position": {"x": 860, "y": 120},
                "data": {"label": "Stop", "output": "no"},
            },
        ],
        "edges": [
            {"id": "e0", "source": "start", "target": "checks"},
            {"id": "e1", "source": "checks", "target": "notes"},
            {"id": "e2", "source": "notes", "target": "ask"},
            {"id": "e3", "source": "ask", "sourceHandle": "approved", "target": "ship"},
            {"id": "e4", "source": "ask", "sourceHandle": "rejected", "target": "stop"},
        ],
    }
    run_id = await execute(served, raw)
    page = await open_run(context, served, run_id)
    form = page.locator("form[data-node-id='ask']")
    await form.wait_for(timeout=60_000)
    assert await page.get_attribute("[data-node-id='ask']", "data-state") == "paused"
    assert await page.text_content("[data-role='run-status']") == "paused"
    assert "Ship the release?" in await form.text_content()
    await form.locator("textarea[name='reason']").fill("tests are green")
    await form.locator("input[name='copies']").fill("3")
    await page.click("[data-node-id='notes']")
    # (docs/ui-run-page.png is the hello example paused at a breakpoint, below.)
    await page.set_viewport_size({"width": 1500, "height": 800})
    await page.screenshot(path=str(ARTIFACTS / "run-approval.png"), clip={"x": 0, "y": 0, "width": 1500, "height": 540})
    await form.locator("[data-role='approve']").click()
    await caught_up(page)
    assert await page.locator("form[data-node-id='ask']").count() == 0, "the answered form goes away"
    assert await page.get_attribute("[data-node-id='ship']", "data-state") == "completed"
    assert await page.get_attribute("[data-node-id='stop']", "data-state") == "skipped"
    result = await final(served, run_id)
    assert result["status"] == "completed" and result["nodes"]["ship"]["output"] == "tests are green x3"
    assert result["nodes"]["ask"]["output"]["decided_by"] == "tester"
    states = [(n, s) for kind, n, s in await page.evaluate("__seen") if kind == "state" and n == "ask"]
    assert states == [("ask", "running"), ("ask", "paused"), ("ask", "completed")] or states == [
        ("ask", "paused"),
        ("ask", "completed"),
    ], states


async def test_a_page_reloaded_mid_run_catches_up(served, context):
    raw = {"name": name("ui-reload"), **chain(delay("a", 0.3), delay("b", 4), delay("c", 0.5))}
    run_id = await execute(served, raw)
    page = await open_run(context, served, run_id)
    await page.wait_for_selector("[data-node-id='b'][data-state='running']", timeout=60_000)
    await page.reload()
    await page.wait_for_selector("body[data-painted='true']")
    # Caught up from the history, while b still runs: a done, b running, c not started.
    await page.wait_for_selector("[data-node-id='a'][data-state='completed']", timeout=10_000)
    assert await page.get_attribute("[data-node-id='b']", "data-state") == "running"
    assert await page.get_attribute("[data-node-id='c']", "data-state") == "pending"
    await caught_up(page)
    seen = [(n, s) for kind, n, s in await page.evaluate("__seen") if kind == "state"]
    assert seen.index(("b", "completed")) < seen.index(("c", "running")) < seen.index(("c", "completed")), seen
    assert ("a", "running") not in seen[seen.index(("b", "completed")) :], "history is not replayed twice"
    ids = []
    async with httpx.AsyncClient(base_url=served, timeout=60) as client:
        async with aconnect_sse(client, "GET", f"/api/executions/{run_id}/stream", headers=AUTH) as source:
            async for sse in source.aiter_sse():
                if sse.data:
                    ids.append(int(sse.id))
    assert await page.get_attribute("body", "data-last-event-id") == str(ids[-1])
    assert await page.text_content("[data-role='event-count']") == f"{len(ids)} events"


async def test_an_error_is_shown_on_the_node_that_failed(served, context):
    raw = {
        "name": name("ui-error"),
        **chain(
            {"id": "boom", "type": "transform", "data": {"label": "Divide", "output": "{{ 1 // 0 }}"}},
            {"id": "after", "type": "transform", "data": {"output": "never"}},
        ),
    }
    run_id = await execute(served, raw)
    page = await open_run(context, served, run_id)
    await caught_up(page)
    assert await page.get_attribute("[data-node-id='boom']", "data-state") == "failed"
    assert "division" in (await page.get_attribute("[data-node-id='boom']", "data-error"))
    assert "division" in await page.text_content("[data-node-id='boom'] [data-role='detail']")
    banner = await page.text_content("[data-role='run-error']")
    assert banner.startswith("Run failed") and "division" in banner
    assert "division" in await page.text_content("[data-role='node-error']"), "the failed node is selected"
    assert await page.get_attribute("[data-node-id='after']", "data-state") in ("pending", "skipped")
    await page.screenshot(path=str(ARTIFACTS / "run-error.png"))
    await page.click("header nav a:has-text('Runs')")  # the list, newest first, links to run pages
    row = page.locator(f"tr[data-execution-id='{run_id}']")
    await row.wait_for(timeout=30_000)
    assert await page.locator("tbody tr").first.get_attribute("data-execution-id") == run_id
    assert await row.locator("[data-status]").text_content() == "failed"
    await row.locator("a").click()
    await page.wait_for_url(f"{served}/ui/executions/{run_id}")


async def test_a_retried_run_streams_and_shows_up_to_its_latest_executions_end(served, context):
    """Issue 31, major 1: after POST .../retry, a stream (and the run page) replays the failed
    execution, says the run was retried, and ends only at the retry's own final event."""

    def canvas(output: str, *tail: dict) -> dict:
        return chain(delay("pre", 0.1), {"id": "boom", "type": "transform", "data": {"output": output}}, *tail)

    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=120) as client:
        saved = await save(client, {"name": name("ui-retry"), **canvas("{{ 1 // 0 }}")}, deployed=False)
        started = await client.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})
        run_id = started.json()["execution_id"]
        assert (await wait_final(client, run_id, timeout=120))["status"] == "failed"
        fixed = await client.put(
            f"/api/workflows/{saved['id']}",
            json={"canvas": {"name": saved["name"], **canvas("{{ 6 // 3 }}", delay("after", 1))}},
        )
        assert fixed.status_code == 200, fixed.text
        retried = await client.post(f"/api/executions/{run_id}/retry", json={"version": fixed.json()["version"]})
        assert retried.status_code == 202, retried.text
        events = []
        async with aconnect_sse(client, "GET", f"/api/executions/{run_id}/stream") as source:
            async for sse in source.aiter_sse():
                if sse.data:
                    events.append((int(sse.id), sse.event, json.loads(sse.data)))
        result = (await client.get(f"/api/executions/{run_id}")).json()
        listed = (await client.get("/api/executions", params={"trigger": "retry"})).json()
    types = [t for _, t, _ in events]
    assert [i for i, _, _ in events] == list(range(1, len(events) + 1)), "every event once, in order"
    assert types.count("execution:failed") == 1 and types.count("execution:retried") == 1, types
    assert types.index("execution:retried") == types.index("execution:failed") + 1, types
    assert types[-1] == "execution:completed" and types.count("execution:completed") == 1, types
    retried_event = events[types.index("execution:retried")][2]
    assert (retried_event["retries"], retried_event["retried_by"], retried_event["status"]) == (1, "tester", "pending")
    assert result["status"] == "completed" and result["output"] is not None, result
    assert result["retries"] == 1 and result["trigger"]["type"] == "retry", result["trigger"]
    assert result["trigger"]["first"]["type"] == "api" and result["trigger"]["retried_by"] == "tester"
    assert [(r["id"], r["retries"]) for r in listed if r["id"] == run_id] == [(run_id, 1)], listed

    page = await open_run(context, served, run_id)
    await caught_up(page)
    assert await page.text_content("[data-role='run-status']") == "completed"
    assert await page.get_attribute("body", "data-retries") == "1"
    assert await page.is_hidden("[data-role='run-error']"), "the failed execution's error is gone"
    assert await page.get_attribute("[data-node-id='after']", "data-state") == "completed"
    # It followed the stream past the failed execution's end, to the retry's (the replay may
    # apply several events in one frame, so the states it went through are not all drawn).
    assert await page.get_attribute("body", "data-last-event-id") == str(events[-1][0])
    assert await page.text_content("[data-role='event-count']") == f"{len(events)} events"


async def test_playground_shows_compile_issues_on_their_nodes_then_runs(served, context):
    page = await context.new_page()  # no key yet: the page asks for one
    await page.goto(f"{served}/ui/new")
    login = page.locator("[data-role='login']")
    await login.locator("input").fill("wrong-key")
    await login.locator("button").click()
    await page.wait_for_selector("[data-role='login'] .error:has-text('not accepted')")
    await login.locator("input").fill(KEY)
    await login.locator("button").click()
    await login.wait_for(state="detached")
    assert await page.evaluate("sessionStorage.getItem('flowmaestro.apiKey')") == KEY
    assert await page.evaluate("localStorage.length") == 0, "the key is kept for the session only"
    broken = {
        "name": name("ui-playground"),
        "nodes": [
            {"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {}},
            {"id": "mystery", "type": "nope", "position": {"x": 220, "y": 0}, "data": {}},
            {"id": "shape", "type": "transform", "position": {"x": 440, "y": 0}, "data": {}},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "mystery"},
            {"id": "e2", "source": "mystery", "target": "shape"},
            {"id": "e3", "source": "shape", "target": "ghost"},
        ],
    }
    await page.set_input_files(
        "[data-role='canvas-file']",
        files=[  # uploaded; the fixed one below is pasted
            {"name": "broken.json", "mimeType": "application/json", "buffer": json.dumps(broken, indent=1).encode()}
        ],
    )
    await page.wait_for_selector("[data-node-id='mystery'][data-issue-severity='error']", timeout=30_000)
    assert "unknown_node_type" in await page.get_attribute("[data-node-id='mystery']", "data-issue-codes")
    assert "invalid_config" in await page.get_attribute("[data-node-id='shape']", "data-issue-codes")
    assert (await page.text_content("[data-node-id='shape'] [data-role='detail']")).startswith("⚠ data.output")
    assert "Field required" in await page.text_content("[data-node-id='shape'] title"), "the whole message on hover"
    assert await page.get_attribute("[data-node-id='start']", "data-issues") is None
    assert await page.locator("[data-role='issues'] li[data-code='dangling_edge']").count() == 1
    assert await page.get_attribute("body", "data-valid") == "false"
    await page.screenshot(path=str(ARTIFACTS / "playground-issues.png"))
    fixed = {
        "name": broken["name"],
        "inputs": {"who": {"type": "string", "required": True}},
        **chain({"id": "greet", "type": "transform", "data": {"output": "Hello {{ inputs.who }}"}}),
    }
    await page.fill("[data-role='canvas-json']", json.dumps(fixed))
    await page.fill("[data-role='inputs-json']", '{"who": "Ada"}')
    await page.click("[data-role='run']")
    await page.wait_for_url(f"{served}/ui/executions/*", timeout=60_000)
    await caught_up(page)
    assert await page.get_attribute("[data-node-id='greet']", "data-state") == "completed"
    run_id = page.url.rsplit("/", 1)[1]
    assert (await final(served, run_id))["output"] == {"greet": "Hello Ada"}


async def test_a_frontend_of_another_origin_follows_a_run_with_a_plain_event_source(served, context, frontend):
    run_id = await execute(served, {"name": name("ui-cors"), **chain(delay("a", 0.2))})
    page = await context.new_page()
    await page.goto(frontend.url)
    events = await asyncio.wait_for(
        page.evaluate("([api, key, run]) => follow(api, key, run)", [served, KEY, run_id]), timeout=120
    )
    assert events[0] == [1, "execution:started"] and events[-1][1] == "execution:completed"
    assert [e[0] for e in events] == sorted({e[0] for e in events})


async def test_the_page_renews_a_refused_token_and_resumes_after_the_last_event(served, context):
    """The first stream request is refused (as an expired token is), the second is cut after
    three events: the page asks for a new token, then reconnects from event 4 with the
    token it has, and every event is applied once."""
    run_id = await execute(served, {"name": name("ui-reconnect"), **chain(delay("a", 0.1), delay("b", 0.1))})
    await final(served, run_id)
    urls: list[str] = []
    first_ids: list[str] = []

    async def flaky(route):
        urls.append(route.request.url)
        if len(urls) == 1:
            await route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps({"detail": "stream token expired", "issues": []}),
            )
            return
        answer = await route.fetch()
        body = await answer.text()
        first_ids.append(re.search(r"^id: (\d+)", body, re.M).group(1))
        if len(urls) == 2:
            body = "\r\n\r\n".join(re.split(r"\r\n\r\n", body)[:3]) + "\r\n\r\n"
        await route.fulfill(response=answer, body=body)

    await context.route(re.compile(r"/stream\?token="), flaky)
    page = await context.new_page()
    tokens_asked: list[str] = []
    page.on("request", lambda r: tokens_asked.append(r.url) if r.url.endswith("/stream-token") else None)
    await page.add_init_script(RECORDER % json.dumps(KEY))
    await page.goto(f"{served}/ui/executions/{run_id}")
    await caught_up(page)
    assert first_ids == ["1", "4"], (first_ids, urls)
    assert urls[2].endswith("&after=3") and urls[1] == urls[2].removesuffix("&after=3"), "the same token, still valid"
    assert len(tokens_asked) == 2, "a new token after the refusal"
    last = int(await page.get_attribute("body", "data-last-event-id"))
    assert await page.text_content("[data-role='event-count']") == f"{last} events", "each event applied once"
    assert await page.get_attribute("[data-node-id='b']", "data-state") == "completed"


async def test_a_canvas_without_positions_is_laid_out_without_overlaps(served, context):
    """Hand-written canvases have no positions: columns by depth, bodies inside their containers."""
    raw = {
        "name": name("ui-layout"),
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "left", "type": "transform", "data": {"output": 1}},
            {"id": "right", "type": "transform", "data": {"output": 2}},
            {"id": "each", "type": "loop", "data": {"mode": "for", "count": 2}},
            {"id": "inner", "type": "transform", "parentId": "each", "data": {"output": 3}},
            {"id": "inner2", "type": "transform", "parentId": "each", "data": {"output": 4}},
            {"id": "end", "type": "end", "data": {}},
        ],
        "edges": [
            {"id": "a", "source": "start", "target": "left"},
            {"id": "b", "source": "start", "target": "right"},
            {"id": "c", "source": "left", "target": "each"},
            {"id": "d", "source": "right", "target": "each"},
            {"id": "e", "source": "inner", "target": "inner2"},
            {"id": "f", "source": "each", "target": "end"},
        ],
    }
    page = await context.new_page()
    await page.add_init_script(RECORDER % json.dumps(KEY))
    await page.goto(f"{served}/ui/new")
    await page.fill("[data-role='canvas-json']", json.dumps(raw))
    await page.wait_for_selector("body[data-valid='true']", timeout=30_000)
    boxes = await page.evaluate("""() => Object.fromEntries([...document.querySelectorAll("[data-node-id]")].map((g) => {
      const r = g.querySelector("rect").getBoundingClientRect();
      return [g.getAttribute("data-node-id"), [r.left, r.top, r.right, r.bottom]];
    }))""")

    def overlap(a, b):
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    def inside(a, b):
        return b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]

    top = ["start", "left", "right", "each", "end"]
    assert not [(a, b) for a in top for b in top if a < b and overlap(boxes[a], boxes[b])], boxes
    assert inside(boxes["inner"], boxes["each"]) and inside(boxes["inner2"], boxes["each"]), boxes
    assert not overlap(boxes["inner"], boxes["inner2"]) and boxes["inner"][2] <= boxes["inner2"][0], "inner -> inner2"
    assert boxes["start"][2] <= boxes["left"][0] and boxes["left"][2] <= boxes["each"][0] <= boxes["end"][0]
    assert boxes["left"][0] == boxes["right"][0], "same depth, same column"


# --- the run page as people debug with it: fitted, without overlaps, pause/resume, node details -----

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = Path(__file__).resolve().parent.parent / "docs"
BOXES = """() => Object.fromEntries([...document.querySelectorAll("[data-node-id]")].map((g) => {
  const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  return [g.getAttribute("data-node-id"), {box: box(g.querySelector("rect")), label: box(g.querySelector(".label")),
          kind: box(g.querySelector(".kind")), parent: g.closest("svg") && null}];
}))"""


def _overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a, b, slack=0.5):
    return b[0] - slack <= a[0] and b[1] - slack <= a[1] and a[2] <= b[2] + slack and a[3] <= b[3] + slack


async def test_the_hello_example_fits_the_window_without_overlaps_and_resumes_from_a_breakpoint(served, context):
    raw = json.loads((EXAMPLES / "hello.json").read_text())
    raw["name"] = name("ui-hello")
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=120) as client:
        workflow_id = (await save(client, raw, deployed=False))["id"]
        started = await client.post(
            f"/api/workflows/{workflow_id}/execute", json={"inputs": {"name": "Ada"}, "breakpoints": ["summary"]}
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["execution_id"]
    page = await open_run(context, served, run_id)
    await page.wait_for_selector("body[data-run-status='paused']", timeout=90_000)
    banner = page.locator("[data-role='pause']")
    await banner.wait_for(state="visible", timeout=30_000)
    assert "breakpoint before summary" in await banner.text_content()
    assert await page.get_attribute("[data-node-id='summary']", "data-state") == "pending"
    assert await page.locator("[data-role='pause']").count() == 1
    assert await page.locator("button[data-role='resume']").is_visible()
    assert await page.locator("button[data-role='pause']").count() == 0, "a paused run has nothing to pause"
    assert await page.locator("button[data-role='cancel']").is_visible()

    found = await page.evaluate(BOXES)
    parents = {n["id"]: n.get("parentId") for n in raw["nodes"]}
    pairs = [
        (a, b)
        for a in found
        for b in found
        if a < b and parents.get(a) != b and parents.get(b) != a and _overlap(found[a]["box"], found[b]["box"])
    ]
    assert pairs == [], f"overlapping nodes: {pairs}"
    for node_id in ("wait", "greet"):
        assert _inside(found[node_id]["box"], found["translate"]["box"]), (node_id, found)
    for node_id, seen in found.items():
        assert not _overlap(seen["label"], seen["kind"]), f"{node_id}: its label runs into its type"
        assert _inside(seen["label"], seen["box"]) and _inside(seen["kind"], seen["box"]), (node_id, seen)
    # Fitted: the whole canvas in its frame, and the frame takes most of the window's height.
    frame = await page.eval_on_selector(
        ".canvas-frame", "e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"
    )
    assert all(_inside(seen["box"], frame) for seen in found.values()), (frame, found)
    assert frame[3] - frame[1] >= 0.6 * 800, f"the canvas frame is {frame[3] - frame[1]} px high in an 800 px window"
    assert frame[2] <= 1300 and frame[3] <= 800, f"the canvas frame {frame} goes beyond the 1300x800 window"
    await page.click("[data-node-id='greet']")
    await page.screenshot(path=str(ARTIFACTS / "run-breakpoint.png"))
    (DOCS / "ui-run-page.png").write_bytes((ARTIFACTS / "run-breakpoint.png").read_bytes())

    await page.click("button[data-role='resume']")
    await caught_up(page)
    assert await page.text_content("[data-role='run-status']") == "completed"
    assert await page.get_attribute("[data-node-id='summary']", "data-state") == "completed"
    assert await banner.is_hidden()
    assert await page.locator("button[data-role='rerun']").is_visible()
    assert await page.locator("button[data-role='resume']").count() == 0
    result = await final(served, run_id)
    assert result["output"]["summary"] == "3 greetings for Ada", result


async def test_the_pause_button_pauses_at_the_next_node_and_resume_continues(served, context):
    raw = {"name": name("ui-pause"), **chain(delay("pre", 2.0), delay("a", 0.2), delay("b", 0.2))}
    run_id = await execute(served, raw)
    page = await open_run(context, served, run_id)
    await page.wait_for_selector("[data-node-id='pre'][data-state='running']", timeout=90_000)
    await page.click("button[data-role='pause']")
    await page.wait_for_selector("body[data-run-status='paused']", timeout=60_000)
    assert "by tester" in await page.text_content("[data-role='pause']")
    assert await page.get_attribute("[data-node-id='pre']", "data-state") == "completed", "pre was not cut short"
    assert await page.get_attribute("[data-node-id='a']", "data-state") == "pending"
    await page.click("button[data-role='resume']")
    await caught_up(page)
    assert await page.text_content("[data-role='run-status']") == "completed"
    states = [(n, s) for kind, n, s in await page.evaluate("__seen") if kind == "state" and n in ("pre", "a")]
    assert states == [("pre", "running"), ("pre", "completed"), ("a", "running"), ("a", "completed")], states
    run_states = [s for kind, n, s in await page.evaluate("__seen") if kind == "state" and n == "b"]
    assert run_states == ["running", "completed"], run_states


async def test_a_clicked_node_shows_its_input_and_output_and_reruns_from_there(served, context):
    raw = {
        "name": name("ui-nodes"),
        **chain(
            {"id": "shout", "type": "transform", "data": {"label": "Shout", "output": "{{ inputs.word | upper }}!"}},
            {"id": "twice", "type": "transform", "data": {"label": "Twice", "output": "{{ shout }} {{ shout }}"}},
        ),
        "inputs": {"word": {"type": "string", "default": "hey"}},
    }
    run_id = await execute(served, raw)
    await final(served, run_id)
    page = await open_run(context, served, run_id)
    await caught_up(page)
    await page.click("[data-node-id='twice']")
    executions = page.locator("[data-role='node-executions']")
    await page.wait_for_selector("[data-role='node-executions'][data-loaded='1']", timeout=30_000)
    assert "HEY! HEY!" in await executions.locator("[data-role='node-output']").text_content()
    assert "HEY!" in await executions.locator("[data-role='node-input']").text_content()
    await page.screenshot(path=str(ARTIFACTS / "run-node-details.png"))
    await page.click("button[data-role='rerun-from-here']")
    await page.wait_for_url(re.compile(r".*/ui/executions/(?!" + run_id + r")[0-9a-f-]+$"), timeout=30_000)
    new_id = page.url.rstrip("/").split("/")[-1]
    await page.wait_for_selector("body[data-painted='true']", timeout=60_000)
    result = await final(served, new_id)
    assert result["status"] == "completed" and result["nodes"]["twice"]["output"] == "HEY! HEY!", result
    assert result["trigger"] == {"type": "rerun", "execution_id": run_id, "from_node": "twice"}, result
    assert result["nodes"]["shout"]["restored"] is True


async def test_the_runs_list_shows_whole_ids_durations_and_filters_by_status_and_workflow(served, context):
    failing = {
        "name": name("ui-list"),
        **chain({"id": "boom", "type": "transform", "data": {"output": "{{ 1 // 0 }}"}}),
    }
    failed_id = await execute(served, failing)
    ok_id = await execute(served, {"name": name("ui-list-ok"), **chain(delay("d", 0.1))})
    await final(served, failed_id)
    await final(served, ok_id)
    page = await context.new_page()
    await page.add_init_script(RECORDER % json.dumps(KEY))
    await page.goto(f"{served}/ui/")
    row = page.locator(f"tr[data-execution-id='{failed_id}']")
    await row.wait_for(timeout=30_000)
    assert await row.locator("td.id").text_content() == failed_id, "the whole id"
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ min \d+ s", await row.locator("[data-role='duration']").text_content())
    await page.select_option("[data-role='status-filter']", "failed")
    await page.wait_for_url(re.compile(r".*\?status=failed$"))
    await page.locator(f"tr[data-execution-id='{failed_id}']").wait_for(timeout=30_000)
    statuses = await page.locator("tbody [data-status]").all_text_contents()
    assert statuses and set(statuses) == {"failed"}, statuses
    assert await page.locator(f"tr[data-execution-id='{ok_id}']").count() == 0
    async with httpx.AsyncClient(base_url=served, headers=AUTH, timeout=60) as client:
        workflow_id = (await client.get(f"/api/executions/{ok_id}")).json()["workflow_id"]
    await page.select_option("[data-role='status-filter']", "")
    await page.wait_for_url(re.compile(r".*/ui/\??$"))
    await page.locator(f"tr[data-execution-id='{ok_id}']").wait_for(timeout=30_000)
    await page.select_option("[data-role='workflow-filter']", workflow_id)
    await page.wait_for_url(re.compile(r".*\?workflow_id=.*"))
    await page.locator(f"tr[data-execution-id='{ok_id}']").wait_for(timeout=30_000)
    assert await page.locator("tbody tr").count() == 1
