"""A person answers an approval in the real Prefect UI, in headless Chromium: the Resume
form is rendered from the approval's form, and submitting it resumes the run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil

import pytest

from flows.approvals import pending_approvals
from flows.flow import workflow_flow
from tests.support import canvas, node

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
CHROMIUM = shutil.which("chromium")
# Chromium flags for a closed network (no background calls to Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def require_chromium() -> None:
    """Skips without Debian's chromium, except under CI=true (.ci/run sets it): there a skip
    would let CI pass without the UI ever being tried, so the test fails instead."""
    if CHROMIUM is not None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true and Debian's chromium is not installed (.ci/run installs it)", pytrace=False)
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)")


async def test_resume_an_approval_in_the_prefect_ui(prefect_server, run_context):
    require_chromium()
    from playwright.async_api import async_playwright

    raw = canvas(
        [
            node(
                "ask",
                "approval",
                data={"message": "Ship it?", "form": {"reason": {"type": "string", "required": True}}},
            ),
            node("ship", data={"output": "{{ ask.input.reason }}"}),
            node("stop", data={"output": "no"}),
        ],
        [("ask", "ship", "approved"), ("ask", "stop", "rejected")],
        name="ui-approval",
    )
    ids: list[str] = []
    listener = lambda bus: ids.append(bus.execution_id)  # noqa: E731
    workflow = workflow_flow(dataclasses.replace(run_context, listeners=(listener,)))
    run = asyncio.create_task(workflow(canvas=raw, inputs={}, return_state=True))
    for _ in range(300):
        if ids and await pending_approvals(ids[0]):
            break
        await asyncio.sleep(0.2)
    run_id = ids[0]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{prefect_server.ui_url}/runs/flow-run/{run_id}")
            resume = page.get_by_role("button", name="Resume")
            await resume.wait_for(timeout=60_000)  # shown once Prefect's pause has started
            await resume.click()
            # Its form drawn first (its Submit button shown), so that on a slow page "the first
            # textarea" is the form's and not another one of the page.
            submit = page.get_by_role("button", name="Submit")
            await submit.wait_for(timeout=60_000)
            await page.get_by_role("switch").click()  # approved: true
            await page.locator("textarea").first.fill("the tests are green")
            await submit.click()
            state = await asyncio.wait_for(run, 120)
        finally:
            await browser.close()
    result = await state.result()
    assert result["status"] == "completed"
    assert result["nodes"]["ask"]["output"]["via"] == "prefect-ui"
    assert result["nodes"]["ship"]["output"] == "the tests are green"
    assert result["nodes"]["stop"]["status"] == "skipped"
