"""The demo's background worker no longer takes a later ``serve``'s runs, and workers with
other settings are named (issue 31, major 2).

Real processes: ``flowmaestro demo`` (its background worker), ``flowmaestro serve`` with
other settings, a ``flowmaestro worker`` left with the old ones, the session's Prefect
server on PostgreSQL, PostgreSQL for the store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from cli.demo import DEMO_KEY
from tests.processes import cli, postgres_database, stack_env, start_serve, start_worker, wait_until
from tests.support import save_and_execute, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "demo-worker-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVE_WORKER = re.compile(r"Workers:\s+1 on pool '([^']+)' \(pids (\d+), settings:([0-9a-f]{8})\)")


def demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("demo", *args), env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def greeting() -> dict:
    return {
        "name": f"after-demo-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "greet", "type": "transform", "data": {"output": "hello"}},
        ],
        "edges": [{"id": "e1", "source": "start", "target": "greet"}],
    }


async def test_the_demo_worker_keeps_to_its_pool_and_workers_with_other_settings_are_named(tmp_path, pg_prefect):
    with postgres_database("fm_demo") as database_url:
        old = stack_env(tmp_path, pg_prefect, database_url, KEY, FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1")
        new = dict(
            old,
            FLOWMAESTRO_HTTP_ALLOW_HOSTS="127.0.0.1,localhost",
            FLOWMAESTRO_API_KEYS=f"tester:{KEY},demo:{DEMO_KEY}",
        )
        pool = old["FLOWMAESTRO_WORK_POOL"]
        first = demo(old, "examples/hello.json", "--input", "name=Ada")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"on pool '{pool}-demo'" in first.stderr, first.stderr
        assert "demo-local-key" in first.stderr, "the demo says whose its runs are"
        state = json.loads((tmp_path / "demo-worker.json").read_text())
        demo_pid = state["pid"]
        assert state["pool"] == f"{pool}-demo" and alive(demo_pid)

        # A worker left on serve's pool with the old settings: serve names it.
        stale = start_worker(tmp_path, old, name="stale")
        serve, base = start_serve(tmp_path, new, workers=1)
        try:
            found = SERVE_WORKER.search(serve.output(100_000))
            assert found and found.group(1) == pool, serve.output()
            serve_pid, fingerprint = int(found.group(2)), found.group(3)
            warning = wait_until(
                lambda: re.search(r"Warning: workers of pool .* run with other settings[^\n]*", serve.output(100_000)),
                timeout=90,
                what="serve's warning about the stale worker",
            ).group(0)
            assert f"settings:{fingerprint}" in warning and "'stale settings:" in warning, warning
            assert f"serve-{serve.pid}-0" not in warning, "serve's own worker agrees with it"
            stale.stop()

            async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
                run_ids = [await save_and_execute(http, greeting()) for _ in range(4)]
                results = [await wait_final(http, run_id, timeout=120) for run_id in run_ids]
                demo_runs = (await http.get("/api/executions", headers={"Authorization": f"Bearer {DEMO_KEY}"})).json()
            assert [r["status"] for r in results] == ["completed"] * 4, results
            async with PrefectClient(pg_prefect.api_url) as prefect:
                takers = {
                    (await prefect.read_flow_run(uuid.UUID(r["flow_run_id"]))).infrastructure_pid for r in results
                }
            assert len(takers) == 1 and takers.pop().endswith(f":{serve_pid}"), "serve's worker took every run"
            assert [r["status"] for r in demo_runs] == ["completed"], "the demo's run, on the run pages' list"

            # The demo again, with the new settings: its old worker is replaced, not reused.
            second = demo(new, "examples/hello.json", "--input", "name=Bo")
            assert second.returncode == 0, second.stdout + second.stderr
            assert f"(pid {demo_pid}) runs with other settings" in second.stderr, second.stderr
            replaced = json.loads((tmp_path / "demo-worker.json").read_text())["pid"]
            assert replaced != demo_pid and not alive(demo_pid) and alive(replaced)
        finally:
            stopped = demo(new, "--stop")
            serve.stop()
            stale.stop()
        assert "stopped the demo's worker" in stopped.stdout, stopped.stdout + stopped.stderr
        assert not alive(replaced)
