"""The Prefect UI's run graph draws the canvas: its edges come from the task runs' inputs,
for inline nodes and real task runs alike, and body nodes sit inside their container.

The graph's data is asserted from Prefect's own graph API (what the UI draws); a screenshot
of the page in headless Chromium is kept as a test artifact for people to look at.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.flow import workflow_flow
from flows.run_context import RunContext
from tests.conftest_llm import allow_hosts, handler_env  # noqa: F401
from tests.support import canvas, node
from tests.test_prefect_ui import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
ARTIFACTS = Path(os.environ.get("FLOWMAESTRO_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))


def graph_canvas(base_url: str) -> dict:
    return canvas(
        [
            node("start", "start"),
            node("shape", "transform", data={"output": {"n": 2}}),
            # a real task run, named by its label: braces once broke Prefect's name template
            node("fetch", "http", data={"url": f"{base_url}/graph", "method": "GET", "label": "fetch {users}"}),
            node("both", "merge", data={"mode": "all"}),
            node("repeat", "loop", data={"mode": "for", "count": 2, "max_iterations": 5}),
            node("step", "transform", parentId="repeat", data={"output": "{{ loop.index }}"}),
            node("done", "transform", data={"output": "{{ repeat.results }}"}),
        ],
        [
            ("start", "shape"),
            ("start", "fetch"),
            ("shape", "both"),
            ("fetch", "both"),
            ("both", "repeat"),
            ("repeat", "done"),
        ],
        name="run-graph",
    )


async def graph_of(flow_run_id: str, expected_nodes: int, timeout: float = 60.0) -> dict:
    """Prefect's run graph (``/flow_runs/{id}/graph-v2``, what the UI draws), once it has
    ``expected_nodes`` nodes in a final state."""
    async with get_client() as client:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            graph = (await client.request("GET", f"/flow_runs/{flow_run_id}/graph-v2")).json()
            final = [n for _, n in graph["nodes"] if n["state_type"] in ("COMPLETED", "FAILED")]
            if len(final) >= expected_nodes or asyncio.get_running_loop().time() > deadline:
                return graph
            await asyncio.sleep(0.5)


async def test_the_run_graph_has_the_canvas_edges_and_the_loop_around_its_bodies(
    prefect_server, test_handler_plugin, counting, handler_env
):
    allow_hosts(handler_env, "127.0.0.1")
    # Built after the allow list is set: a context reads the handlers' settings when it is built.
    run_context = RunContext.from_environment()
    try:
        state = await workflow_flow(run_context)(canvas=graph_canvas(counting.url), inputs={}, return_state=True)
        assert (await state.result())["status"] == "completed"
    finally:
        await run_context.close()
    flow_run_id = str(state.state_details.flow_run_id)
    graph = await graph_of(flow_run_id, 8)
    nodes = {n["label"]: n for _, n in graph["nodes"]}
    assert sorted(nodes) == ["both", "done", "fetch {users}", "repeat", "shape", "start", "step [1/2]", "step [2/2]"]
    label_of = {n["id"]: label for label, n in nodes.items()}

    def parents(label: str) -> list[str]:
        # a set: Prefect's graph query can list one edge twice (a task run with several states)
        return sorted({label_of[edge["id"]] for edge in nodes[label]["parents"]})

    # roots: nodes with no upstream (the loop's bodies hang inside it instead)
    assert sorted(label_of[i] for i in graph["root_node_ids"]) == ["start", "step [1/2]", "step [2/2]"]
    assert parents("shape") == parents("fetch {users}") == ["start"]
    assert parents("both") == ["fetch {users}", "shape"]  # fetch is a real task run: its edges too
    assert parents("repeat") == ["both"] and parents("done") == ["repeat"]
    for step in ("step [1/2]", "step [2/2]"):
        assert [label_of[e["id"]] for e in nodes[step]["encapsulating"]] == ["repeat"]
    assert counting.counts["/graph"] == 1

    require_chromium()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "prefect-run-graph.png"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{prefect_server.ui_url}/runs/flow-run/{flow_run_id}")
            await page.locator(".flow-run-graph canvas, canvas").first.wait_for(timeout=60_000)
            await page.wait_for_timeout(1500)  # the graph lays itself out after its data arrives
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert shot.stat().st_size > 10_000
    print(f"run graph screenshot: {shot}")
