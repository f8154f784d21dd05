"""The pages a browser opens: runs (``/ui/``), a run live (``/ui/executions/{id}``) and the
playground (``/ui/new``).

Each page is a static HTML shell plus plain JavaScript modules and one CSS file shipped in
``api/static`` (package data: no build step, nothing fetched from the internet). The
shells hold no data and need no key: the page asks for an API key, keeps it in
``sessionStorage`` and calls the JSON API like any client, following the run's stream
with a stream token (``api/stream_tokens.py``). What the pages do: docs/ui.md.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("flowmaestro.api.ui")
STATIC = Path(__file__).resolve().parent / "static"
# The pages only talk to this API and load only their own files: an injected script or a
# stray URL in a canvas could not send the key elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGES = {"list": "Runs", "run": "Run", "new": "Playground"}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _shell(request: Request, page: str) -> HTMLResponse:
    """The page's HTML: where the API is, the Prefect UI's public address when the operator
    configured one (``FLOWMAESTRO_PREFECT_PUBLIC_URL``; none otherwise), and the page's module."""
    root = request.scope.get("root_path", "")
    prefect_ui = getattr(getattr(request.app.state, "runs", None), "prefect_public_url", None) or ""
    e = html.escape
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="flowmaestro-api" content="{e(root)}">
<meta name="flowmaestro-prefect-ui" content="{e(prefect_ui)}">
<title>{e(PAGES[page])} · FlowMaestro</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{e(root)}/ui/static/ui.css">
<script type="module" src="{e(root)}/ui/static/{page}.js"></script>
</head>
<body data-page="{page}">
<noscript>This page needs JavaScript.</noscript>
</body>
</html>
"""
    return HTMLResponse(body, headers=SECURITY_HEADERS)


@router.get("", response_class=RedirectResponse)
async def ui_root(request: Request) -> RedirectResponse:
    return RedirectResponse(f"{request.scope.get('root_path', '')}/ui/", status_code=307)


@router.get("/", response_class=HTMLResponse)
async def runs_page(request: Request) -> HTMLResponse:
    return _shell(request, "list")


@router.get("/new", response_class=HTMLResponse)
async def playground_page(request: Request) -> HTMLResponse:
    return _shell(request, "new")


@router.get("/executions/{execution_id}", response_class=HTMLResponse)
async def run_page(request: Request, execution_id: str) -> HTMLResponse:
    return _shell(request, "run")


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
