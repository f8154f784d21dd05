"""The Workflows (``/ui/workflows``) and Templates (``/ui/templates``) pages in headless
Chromium against a real ``flowmaestro serve`` (no worker: nothing runs) on the session's
Prefect server: a user finds a workflow, sees what changed between two versions outlined on
the canvas, rolls back; browses the gallery, filters it, and starts a workflow from a
template. The pages' Content-Security-Policy holds (any console error fails the test)."""

from __future__ import annotations

import copy
import os
import re
import uuid

import httpx
import pytest
from playwright.async_api import Expect

from tests.processes import start_serve
from tests.support import hello
from tests.test_prefect_ui import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
KEY = f"ui-library-{uuid.uuid4().hex}"

# Playwright's default of 5 s is too short here: a save (a rollback, a template used) answers
# once its Prefect deployment is made, which can take up to the serve's Prefect timeout (60 s)
# while the other test process loads Prefect on SQLite; a clean CI run lost this module so.
expect = Expect()
expect.set_options(timeout=90_000)


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    require_chromium()
    home = tmp_path_factory.mktemp("ui-library")
    env = dict(
        os.environ,
        FLOWMAESTRO_API_KEYS=f"tester:{KEY}",
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'api.db'}",
        FLOWMAESTRO_PREFECT_TIMEOUT_S="60",
    )
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop(60)


@pytest.fixture(scope="module")
async def browser(served):
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def open_page(browser, served):
    contexts, errors = [], []

    async def opening(path: str):
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        context.on("weberror", lambda e: errors.append(str(e.error)))
        context.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        page = await context.new_page()
        await page.add_init_script(f"sessionStorage.setItem('flowmaestro.apiKey', {KEY!r});")
        await page.goto(f"{served}{path}")
        await page.wait_for_selector("body[data-ready='true']", timeout=60_000)
        return page

    yield opening
    for context in contexts:
        await context.close()
    assert not errors, f"errors in the page: {errors}"


def client(served: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=served, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


async def test_versions_diff_on_the_canvas_and_rollback(served, open_page):
    name = f"page-{uuid.uuid4().hex[:6]}"
    v1 = hello(name)
    v2 = copy.deepcopy(v1)
    v2["nodes"][1]["data"]["output"] = "Hi {{ inputs.who }}"
    async with client(served) as api:
        made = await api.post("/api/workflows", json={"canvas": v1})
        assert made.status_code == 201, made.text
        wid = made.json()["id"]
        assert (await api.put(f"/api/workflows/{wid}", json={"canvas": v2})).status_code == 200

    page = await open_page("/ui/workflows")
    await page.fill("[data-role='search']", name)
    await expect(page.locator("[data-role='workflow-list'] li")).to_have_count(1)
    await page.fill("[data-role='search']", "no workflow is called this")
    await expect(page.locator("body")).to_have_attribute("data-workflows", "0")
    await page.fill("[data-role='search']", name)
    await page.click(f"li[data-workflow-id='{wid}'] [data-role='open']")
    await expect(page.locator("body")).to_have_attribute("data-diff", "1-2")
    await expect(page.locator("[data-role='versions'] tbody tr")).to_have_count(2)
    # The changed node is outlined on the canvas; the others are not.
    await expect(page.locator(".node[data-node-id='greet']")).to_have_attribute("data-diff", "changed")
    assert await page.locator(".node[data-diff]").count() == 1
    await expect(page.locator("[data-role='changes']")).to_contain_text("greet data.output")

    await page.click("tr[data-version='1'] [data-role='rollback']")
    await expect(page.locator("[data-role='status']")).to_have_text(re.compile("^Rolled back: version 3"))
    await expect(page.locator("[data-role='versions'] tbody tr")).to_have_count(3)
    async with client(served) as api:
        read = (await api.get(f"/api/workflows/{wid}")).json()
    assert read["version"] == 3 and read["canvas"] == v1


async def test_the_gallery_filters_and_instantiates(served, open_page):
    page = await open_page("/ui/templates")
    count = int(await page.get_attribute("body", "data-templates") or 0)
    assert count >= 10
    await expect(page.locator(".template-card")).to_have_count(count)
    support = page.locator(".template-card[data-template-id='support-triage-approval']")
    await expect(support.locator("[data-role='needs-credentials']")).to_contain_text("helpdesk (bearer)")
    await page.select_option("[data-role='category']", "data")
    await expect(page.locator(".template-card")).to_have_count(2)
    assert set(await page.locator(".template-card").evaluate_all("cards => cards.map(c => c.dataset.category)")) == {
        "data"
    }
    await page.select_option("[data-role='category']", "")
    await page.fill("[data-role='search']", "reminder")
    await expect(page.locator(".template-card")).to_have_count(1)

    name = f"reminder-{uuid.uuid4().hex[:6]}"
    card = page.locator(".template-card[data-template-id='delay-reminder']")
    await card.locator("[data-role='new-name']").fill(name)
    await card.locator("[data-role='use']").click()
    await expect(page.locator("[data-role='status']")).to_have_text(f"Saved workflow {name} (version 1).")
    made = await page.get_attribute("body", "data-instantiated")
    async with client(served) as api:
        read = (await api.get(f"/api/workflows/{made}")).json()
    assert read["name"] == name and read["canvas"]["nodes"][1]["type"] == "delay"
    # The same name again: refused, said on the page.
    await card.locator("[data-role='use']").click()
    await expect(page.locator("[data-role='status']")).to_have_text(re.compile("^Could not use Delayed reminder"))
