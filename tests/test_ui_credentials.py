"""The Credentials page (``/ui/credentials``) in headless Chromium against a real
``flowmaestro serve`` (uvicorn, a SQLite store) on the session's Prefect server: a user adds,
rotates and deletes credentials, and no value ever reaches the page again.

Values are unique random strings, searched for in everything the page holds after each
step: its serialized HTML, every input's live value, session and local storage. What the
store holds is read back with the server's key, to show that the page really sent the
values (a rotation is the new value, not a no-op)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from store.credentials import Credentials
from store.db import make_engine, sessions
from store.errors import NotFound
from store.secrets import SecretBox
from tests.processes import start_serve
from tests.test_prefect_ui import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
KEY, OTHER_KEY = f"ui-cred-{uuid.uuid4().hex}", f"ui-cred-other-{uuid.uuid4().hex}"
SECRET_KEY = f"server-key-{uuid.uuid4().hex}"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "ui"

# Everything a page holds that a value could hide in: the HTML (attributes, text), the live
# values of inputs (not attributes, so not in the HTML), and the browser's storages.
PAGE_HOLDS = """(needle) => {
  const found = [];
  if (document.documentElement.outerHTML.includes(needle)) found.push("html");
  for (const input of document.querySelectorAll("input, textarea, select"))
    if ((input.value || "").includes(needle)) found.push(`value of ${input.outerHTML}`);
  for (const store of [sessionStorage, localStorage])
    for (let i = 0; i < store.length; i++)
      if ((store.getItem(store.key(i)) || "").includes(needle)) found.push(`storage ${store.key(i)}`);
  return found;
}"""


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    require_chromium()
    home = tmp_path_factory.mktemp("ui-credentials")
    database = home / "api.db"
    env = dict(
        os.environ,
        FLOWMAESTRO_API_KEYS=f"tester:{KEY},other:{OTHER_KEY}",
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        FLOWMAESTRO_SECRET_KEY=SECRET_KEY,
        FLOWMAESTRO_PREFECT_TIMEOUT_S="60",
    )
    proc, base = start_serve(home, env, workers=0)
    yield base, home, database
    proc.stop(60)


@pytest.fixture(scope="module")
async def browser(served):
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser, served):
    base, _, _ = served
    context = await browser.new_context(viewport={"width": 1300, "height": 800})
    errors: list[str] = []
    context.on("weberror", lambda e: errors.append(str(e.error)))
    # Console errors too (a Content-Security-Policy violation is one), except failed requests
    # (the refused duplicate is one, on purpose).
    context.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and not m.text.startswith("Failed to load resource") else None
        ),
    )
    page = await context.new_page()
    await page.add_init_script(f"sessionStorage.setItem('flowmaestro.apiKey', {KEY!r});")
    await page.goto(f"{base}/ui/credentials")
    await page.wait_for_selector("body[data-ready='true']", timeout=60_000)
    yield page
    await context.close()
    assert not errors, f"errors in the page: {errors}"


async def stored(served, owner: str, name: str) -> dict[str, str] | None:
    """The values the server stored for ``owner``'s credential ``name`` (None: there is none)."""
    _, home, database = served
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    try:
        credentials = Credentials(sessions(engine), SecretBox.for_credentials(SECRET_KEY, home))
        return dict((await credentials.read(owner, name)).data)
    except NotFound:
        return None
    finally:
        await engine.dispose()


async def listed(served, key: str) -> httpx.Response:
    base, _, _ = served
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        return await client.get("/api/credentials")


async def assert_nowhere(page, *secrets: str) -> None:
    for secret in secrets:
        assert await page.evaluate(PAGE_HOLDS, secret) == [], f"a value is in the page: {secret[:6]}..."


async def status_reads(page, start: str) -> None:
    """Waits until the page's status line starts with ``start`` (polled by Playwright from
    outside: the page's Content-Security-Policy forbids evaluating strings in it)."""
    await expect(page.locator("[data-role='status']")).to_have_text(re.compile("^" + re.escape(start)), timeout=30_000)


async def row_count(page) -> int:
    return int(await page.get_attribute("body", "data-credentials") or 0)


async def test_add_list_rotate_delete_and_no_value_ever_shown(served, page):
    name, first, second = f"openai-{uuid.uuid4().hex[:6]}", f"sk-{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    before = await row_count(page)

    # Add: an api_key, typed into a password input.
    await page.fill("[data-role='add-name']", name)
    await page.select_option("[data-role='add-type']", "api_key")
    secret_input = page.locator("[data-role='add-credential'] input[data-field='api_key']")
    assert await secret_input.get_attribute("type") == "password"
    await secret_input.fill(first)
    await page.click("[data-role='add-credential'] button[type='submit']")
    row = page.locator(f"tr[data-credential-name='{name}']")
    await row.wait_for(timeout=30_000)
    assert await page.text_content("[data-role='status']") == f"Saved {name}."
    assert await row_count(page) == before + 1
    assert await row.locator("[data-role='fields']").text_content() == "api_key"
    assert await row.locator("[data-role='type']").text_content() == "API key"
    await assert_nowhere(page, first)
    assert await stored(served, "tester", name) == {"api_key": first}
    answer = await listed(served, KEY)
    assert name in answer.text and first not in answer.text

    # Rotate: new value in, the list unchanged but for updated_at, the old value gone from the store.
    updated = await row.locator("[data-role='updated']").text_content()
    await row.locator("[data-role='rotate']").click()
    rotate = page.locator("[data-role='rotate-credential']")
    new_input = rotate.locator("input[data-field='api_key']")
    assert await new_input.get_attribute("type") == "password"
    await new_input.fill(second)
    await rotate.locator("button[type='submit']").click()
    await status_reads(page, f"Rotated {name}:")
    # The status is said before the list is drawn again (an await later): wait for the redraw.
    await expect(page.locator("[data-role='rotate-credential']")).to_have_count(0, timeout=30_000)
    await expect(page.locator(f"tr[data-credential-name='{name}'] [data-role='updated']")).not_to_have_text(
        updated or "", timeout=30_000
    )
    assert await stored(served, "tester", name) == {"api_key": second}
    await assert_nowhere(page, first, second)

    # Delete, after a confirmation.
    await page.locator(f"tr[data-credential-name='{name}'] [data-role='delete']").click()
    await page.locator(f"tr[data-credential-name='{name}'] [data-role='keep']").click()  # changed my mind
    assert await stored(served, "tester", name) == {"api_key": second}
    await page.locator(f"tr[data-credential-name='{name}'] [data-role='delete']").click()
    await page.locator(f"tr[data-credential-name='{name}'] [data-role='confirm-delete']").click()
    await page.locator(f"tr[data-credential-name='{name}']").wait_for(state="detached", timeout=30_000)
    assert await row_count(page) == before
    assert await stored(served, "tester", name) is None
    assert name not in (await listed(served, KEY)).text
    await assert_nowhere(page, first, second)


async def test_each_type_gets_its_fields_and_refusals_are_shown(served, page):
    name, password, custom_value = (
        f"basic-{uuid.uuid4().hex[:6]}",
        f"pw-{uuid.uuid4().hex}",
        f"cv-{uuid.uuid4().hex}",
    )
    await page.fill("[data-role='add-name']", name)
    await page.select_option("[data-role='add-type']", "basic")
    form = page.locator("[data-role='add-credential']")
    assert await form.locator("input[data-field='username']").get_attribute("type") == "text"
    assert await form.locator("input[data-field='password']").get_attribute("type") == "password"
    await form.locator("input[data-field='username']").fill("ada")
    await form.locator("input[data-field='password']").fill(password)
    await form.locator("button[type='submit']").click()
    await page.locator(f"tr[data-credential-name='{name}']").wait_for(timeout=30_000)
    assert await stored(served, "tester", name) == {"username": "ada", "password": password}

    # The same name again: the API's 409 is shown, and the value typed is gone all the same.
    await page.fill("[data-role='add-name']", name)
    await page.select_option("[data-role='add-type']", "bearer")
    await form.locator("input[data-field='token']").fill(f"tok-{uuid.uuid4().hex}")
    await form.locator("button[type='submit']").click()
    await status_reads(page, "Not saved: ")
    assert await form.locator("input[data-field='token']").input_value() == ""

    # custom: fields of any names, each value a password input.
    custom = f"custom-{uuid.uuid4().hex[:6]}"
    await page.fill("[data-role='add-name']", custom)
    await page.select_option("[data-role='add-type']", "custom")
    await form.locator("[data-role='custom-name']").fill("tenant")
    await form.locator("[data-role='add-value']").fill("acme")
    await form.locator("[data-role='add-field']").click()
    await form.locator("[data-role='custom-name']").nth(1).fill("signing_key")
    await form.locator("[data-role='add-value']").nth(1).fill(custom_value)
    assert await form.locator("[data-role='add-value']").nth(1).get_attribute("type") == "password"
    await form.locator("button[type='submit']").click()
    row = page.locator(f"tr[data-credential-name='{custom}']")
    await row.wait_for(timeout=30_000)
    assert await row.locator("[data-role='fields']").text_content() == "signing_key, tenant"
    assert await stored(served, "tester", custom) == {"tenant": "acme", "signing_key": custom_value}
    await assert_nowhere(page, password, custom_value)
    await page.screenshot(path=str(ARTIFACTS / "credentials.png"))


async def test_another_owners_credentials_are_not_listed(served, page):
    base, _, _ = served
    theirs = f"theirs-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {OTHER_KEY}"}) as client:
        made = await client.post("/api/credentials", json={"name": theirs, "type": "bearer", "data": {"token": "t0k"}})
        assert made.status_code == 201, made.text
    await page.reload()
    await page.wait_for_selector("body[data-ready='true']", timeout=60_000)
    assert await page.locator(f"tr[data-credential-name='{theirs}']").count() == 0
    assert theirs not in await page.content()
