"""``flowmaestro demo``: the whole path on the embedded default, in one command.

The canvas is saved through the API (in this process, on the same database as the
workers), executed, picked up by a worker process (started in the background the first
time and reused, like the embedded Prefect server), followed over the API's event
stream, and its result printed with the link to the run in the Prefect UI.

The demo's worker polls a pool of its own (``<pool>-demo``): left running, it must not take
the runs of a ``flowmaestro serve`` started later with other settings. It is reused only
while it runs with the settings the demo has now (``deployments.settings_fingerprint``),
and started again otherwise. The demo's workflows and runs belong to the owner ``demo``
(key ``demo-local-key``, a key for this machine's demo only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from rich.console import Console

from cli.progress import NODE_EVENTS, STYLES, print_result, run_link
from deployments.settings_fingerprint import settings_fingerprint
from flows.child_environment import worker_environment
from store.vocabulary import FINAL_EVENT_TYPES

DEMO_OWNER, DEMO_KEY = "demo", "demo-local-key"


def demo_pool(pool: str) -> str:
    """The demo worker's own pool, beside the installation's ``pool``."""
    return f"{pool}-demo"


def _worker_file(home: Path) -> Path:
    return home / "demo-worker.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def ensure_worker(home: Path, pool: str, console: Console) -> int:
    """The background worker of the demo on ``pool``: reused when alive with the settings
    the demo has now, else (re)started."""
    environment = worker_environment(os.environ)  # not the API's keys
    fingerprint = settings_fingerprint(environment)
    state = _worker_file(home)
    if state.exists():
        found = json.loads(state.read_text())
        pid = found.get("pid")
        if pid and _alive(pid):
            if found.get("settings") == fingerprint and found.get("pool") == pool:
                return int(pid)
            console.print(
                f"The demo's background worker (pid {pid}) runs with other settings "
                f"(settings:{found.get('settings')}, now settings:{fingerprint}): stopping it.",
                soft_wrap=True,
            )
            stop_worker(home)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "demo-worker.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--pool", pool, "--name", "embedded"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=environment,
    )
    state.write_text(json.dumps({"pid": process.pid, "pool": pool, "settings": fingerprint}))
    console.print(
        f"Started the demo's worker in the background on pool {pool!r} (pid {process.pid}, "
        f"settings:{fingerprint}, log {home / 'demo-worker.log'}); `flowmaestro demo --stop` stops it.",
        soft_wrap=True,
    )
    return process.pid


def stop_worker(home: Path) -> bool:
    state = _worker_file(home)
    if not state.exists():
        return False
    pid = json.loads(state.read_text()).get("pid")
    state.unlink()
    if not pid or not _alive(pid):
        return False
    os.killpg(pid, signal.SIGTERM)
    for _ in range(150):
        if not _alive(pid):
            return True
        time.sleep(0.2)
    os.killpg(pid, signal.SIGKILL)
    return True


async def run_demo(
    canvas: dict[str, Any], inputs: dict[str, Any], ui_url: str, console: Console, *, pool: str
) -> dict[str, Any]:
    """Save (or add a version to) the workflow on ``pool``, execute it, follow it, return
    its result."""
    from api.app import create_app
    from api.settings import ApiSettings

    settings = ApiSettings(api_keys=f"{DEMO_OWNER}:{DEMO_KEY}", work_pool=pool)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://flowmaestro",
            headers={"Authorization": f"Bearer {DEMO_KEY}"},
            timeout=60,
        ) as api:
            workflow_id = await _save(api, canvas)
            started = await api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": inputs})
            if started.status_code != 202:
                raise RuntimeError(f"execute answered {started.status_code}: {started.text}")
            run_id = started.json()["execution_id"]
            console.print(
                f"saved workflow {workflow_id}; run {run_id} waits for a worker\n"
                f"  Prefect UI: {run_link(ui_url, run_id)}",
                soft_wrap=True,
            )
            async with aconnect_sse(api, "GET", f"/api/executions/{run_id}/stream") as source:
                async for sse in source.aiter_sse():
                    if not sse.data:
                        continue
                    event = json.loads(sse.data)
                    state = NODE_EVENTS.get(sse.event)
                    if state and not event.get("path"):
                        console.print(f"  {event['node_id']}: [{STYLES.get(state, '')}]{state}[/]")
                    if sse.event in FINAL_EVENT_TYPES:
                        break
            return (await api.get(f"/api/executions/{run_id}")).json()


async def _save(api: httpx.AsyncClient, canvas: dict[str, Any]) -> str:
    name = canvas.get("name")
    existing = [w for w in (await api.get("/api/workflows")).json() if w["name"] == name]
    if existing:
        answer = await api.put(f"/api/workflows/{existing[0]['id']}", json={"canvas": canvas})
    else:
        answer = await api.post("/api/workflows", json={"canvas": canvas})
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"saving the workflow answered {answer.status_code}: {answer.text}")
    return answer.json()["id"]


__all__ = ["ensure_worker", "print_result", "run_demo", "stop_worker"]
