"""How the run page copes with a big run: a 500-node canvas whose run has 5,002 events
(each node: started, 8 token chunks, completed), opened in headless Chromium.

The run is written straight into a store and event log (a run that ended: the API serves
its page and stream from them alone, no Prefect server needed); the API is the real app
under uvicorn. Printed, per trial: time to first paint (the canvas drawn: every node in
the DOM and rendered), time to catch up (the last event applied to the DOM), and while
catching up: the longest animation frame (script, style, layout and paint of one frame;
the browser reports those over 50 ms, so 0 means none was) and the worst delay of a 10 ms
timer (about what a click would wait while the history is applied). For scale, it also
prints how long the API takes to send the whole stream to a client that only reads it.

    python -m benchmarks.ui_page [--nodes 500] [--chunks 8] [--trials 3] [--screenshot PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from tests.processes import free_port

KEY = "bench-key"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def big_canvas(n: int) -> dict:
    """A React Flow export: rows of 25 nodes, each row a chain, positions as an editor saves them."""
    per_row = 25
    nodes, edges = [], []
    for i in range(n):
        row, col = divmod(i, per_row)
        kind = "llm" if i % 5 == 2 else "transform"
        data = (
            {"label": f"step {i}", "model": "text", "prompt": "hi"}
            if kind == "llm"
            else {"label": f"step {i}", "output": i}
        )
        nodes.append(
            {
                "id": f"n{i}",
                "type": kind,
                "position": {"x": col * 220, "y": row * 90},
                "measured": {"width": 180, "height": 58},
                "data": data,
            }
        )
        if col:
            edges.append({"id": f"e{i}", "source": f"n{i - 1}", "target": f"n{i}"})
    return {"name": "big", "nodes": nodes, "edges": edges}


def big_run(run_id: str, n: int, chunks: int):
    from flows.events import RunEvent, utcnow

    now = utcnow().isoformat()
    events = [RunEvent(1, "execution:started", run_id, now, data={"workflow": "big"})]
    for i in range(n):
        node = f"n{i}"
        events.append(
            RunEvent(
                len(events) + 1,
                "node:started",
                run_id,
                now,
                node_id=node,
                path=(),
                data={"type": "transform", "label": f"step {i}"},
            )
        )
        for c in range(chunks):
            events.append(
                RunEvent(
                    len(events) + 1,
                    "stream:chunk",
                    run_id,
                    now,
                    node_id=node,
                    path=(),
                    data={"index": c, "text": f"tok{c} ", "attempt": 1},
                )
            )
        events.append(
            RunEvent(
                len(events) + 1,
                "node:completed",
                run_id,
                now,
                node_id=node,
                path=(),
                data={"status": "completed", "output": i, "error": None, "attempts": 1, "handles": ["source"]},
            )
        )
    events.append(
        RunEvent(
            len(events) + 1,
            "execution:completed",
            run_id,
            now,
            data={"status": "completed", "output": None, "error": None},
        )
    )
    return events


async def new_run(app, workflow_id: str, n: int, chunks: int):
    """A run in the store (its result stored, so its page needs no Prefect) and its events."""
    run_id = str(uuid.uuid4())
    executions = app.state.runs.executions
    await executions.record_start(
        execution_id=run_id,
        owner="bench",
        workflow_id=workflow_id,
        version=1,
        workflow_name="big",
        inputs={},
        trigger={"type": "api"},
    )
    await executions.record_result(
        run_id,
        {"id": run_id, "workflow": "big", "workflow_id": workflow_id, "version": 1, "status": "completed", "nodes": {}},
    )
    return run_id, big_run(run_id, n, chunks)


PROBE = """
window.__bench = {longestFrame: 0, worstTimer: 0};
const catchingUp = () => document.body && document.body.dataset.painted === "true"
                         && document.body.dataset.caughtUp !== "true";
// Long animation frames (over 50 ms: script, style, layout and paint of one frame) while
// the history is applied.
new PerformanceObserver((list) => {
  const painted = performance.getEntriesByName("fm:first-paint")[0];
  for (const e of list.getEntries())
    if (painted && e.startTime >= painted.startTime)
      window.__bench.longestFrame = Math.max(window.__bench.longestFrame, e.duration);
}).observe({type: "long-animation-frame", buffered: true});
let last = performance.now();
setInterval(() => {
  const now = performance.now();
  if (catchingUp()) window.__bench.worstTimer = Math.max(window.__bench.worstTimer, now - last - 10);
  last = now;
}, 10);
"""


async def trial(browser, base: str, run_id: str, n: int, screenshot: Path | None, feed=None) -> dict:
    """Opens the run page; with ``feed``, the run's events are appended only once the page
    is painted (``feed()``, a coroutine), as a live run's are."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    await context.add_init_script(f"sessionStorage.setItem('flowmaestro.apiKey', '{KEY}');" + PROBE)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{base}/ui/executions/{run_id}")
    lag_ms = None
    if feed is not None:
        await page.wait_for_selector("body[data-painted='true']", timeout=120_000)
        await feed()
        fed = time.perf_counter()
        await page.wait_for_selector("body[data-caught-up='true']", timeout=120_000, state="attached")
        lag_ms = (time.perf_counter() - fed) * 1000
    await page.wait_for_selector("body[data-caught-up='true']", timeout=120_000, state="attached")
    numbers = await page.evaluate("""() => {
      const nav = performance.getEntriesByType("navigation")[0];
      const mark = (name) => performance.getEntriesByName(name)[0].startTime;
      return {first_paint_ms: mark("fm:first-paint"), caught_up_ms: mark("fm:final"),
              dom_nodes: document.querySelectorAll("[data-node-id]").length,
              completed: document.querySelectorAll("[data-node-id][data-state='completed']").length,
              events: Number(document.body.dataset.lastEventId),
              longest_frame_ms: window.__bench.longestFrame, worst_timer_delay_ms: window.__bench.worstTimer};
    }""")
    assert not errors, errors
    assert numbers["completed"] == n, numbers
    numbers["lag_ms"] = lag_ms
    if screenshot:
        await page.screenshot(path=str(screenshot))
    await context.close()
    return numbers


async def read_stream(base: str, run_id: str) -> float:
    """Seconds the API takes to send the whole stream to a client that does nothing else:
    the floor under the page's catch-up time."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as client:
        started = time.perf_counter()
        async with client.stream("GET", f"/api/executions/{run_id}/stream") as answer:
            async for _ in answer.aiter_bytes():
                pass
        return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=8, help="token chunks per node")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument(
        "--live-rate", type=int, default=1000, help="events a second appended while the page is open, in the live trial"
    )
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fm-ui-bench-"))
    os.environ.update(
        FLOWMAESTRO_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",  # nothing there: not needed
        FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'api.db'}",
    )
    os.environ.pop("FLOWMAESTRO_REDIS_URL", None)
    import uvicorn
    from playwright.async_api import async_playwright

    from api.app import create_app
    from api.settings import ApiSettings

    app = create_app(ApiSettings(api_keys=f"bench:{KEY}"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", access_log=False))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        saved = await app.state.runs.workflows.create("bench", "big", big_canvas(args.nodes), "bench")
        run_id, events = await new_run(app, saved.workflow_id, args.nodes, args.chunks)
        await app.state.event_log.append(events)
        base = f"http://127.0.0.1:{port}"
        stream_s = await read_stream(base, run_id)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            results = []
            for i in range(args.trials):
                results.append(
                    await trial(browser, base, run_id, args.nodes, args.screenshot if i == args.trials - 1 else None)
                )
            live_id, live_events = await new_run(app, saved.workflow_id, args.nodes, args.chunks)
            batch = max(1, args.live_rate // 20)

            async def feed() -> None:  # 20 batches a second
                for start in range(0, len(live_events), batch):
                    await app.state.event_log.append(live_events[start : start + batch])
                    await asyncio.sleep(0.05)

            live = await trial(browser, base, live_id, args.nodes, None, feed)
            await browser.close()
    finally:
        server.should_exit = True
        await serving
        shutil.rmtree(home, ignore_errors=True)
    first = results[0]
    print(
        f"run page, {args.nodes} nodes, {first['events']} events, {args.trials} trials (headless Chromium, "
        f"{os.cpu_count()} cores)"
    )
    print(f"{'trial':>5} {'first paint':>12} {'caught up':>10} {'longest frame':>14} {'worst timer delay':>18}")
    for i, r in enumerate(results, 1):
        print(
            f"{i:>5} {r['first_paint_ms']:>10.0f}ms {r['caught_up_ms']:>8.0f}ms {r['longest_frame_ms']:>12.0f}ms "
            f"{r['worst_timer_delay_ms']:>16.0f}ms"
        )
    print(f"the API alone sends the {first['events']} events to a plain HTTP client in {stream_s * 1000:.0f} ms")
    print(
        f" live: {live['events']} events appended at {args.live_rate}/s while the page is open: the page is "
        f"{live['lag_ms']:.0f} ms behind the last one; longest frame {live['longest_frame_ms']:.0f} ms, worst timer "
        f"delay {live['worst_timer_delay_ms']:.0f} ms"
    )
    print(
        f"median: first paint {statistics.median(r['first_paint_ms'] for r in results):.0f} ms, caught up "
        f"{statistics.median(r['caught_up_ms'] for r in results):.0f} ms after navigation start"
    )


if __name__ == "__main__":
    asyncio.run(main())
