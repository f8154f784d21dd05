"""``flowmaestro serve`` keeps its embedded workers alive (issue 31, major 9): a worker
killed with SIGKILL is replaced, serve says so, and the replacement takes the next run.

Real processes: ``flowmaestro serve --workers 1`` on the session's Prefect server on
PostgreSQL, its worker child, PostgreSQL for the store.
"""

from __future__ import annotations

import os
import re
import signal
import uuid

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from tests.processes import postgres_database, stack_env, start_serve
from tests.support import eventually, save_and_execute, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
KEY = "supervision-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STARTED = re.compile(r"Workers:\s+1 on pool '[^']+' \(pids (\d+), settings:[0-9a-f]{8}\)")
RESTARTED = re.compile(r"worker serve-\d+-0 \(pid (\d+)\) exited with code -9; starting another in 1 s")
AGAIN = re.compile(r"worker serve-\d+-0 started again \(pid (\d+)\)")


def greeting(name: str) -> dict:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "greet", "type": "transform", "data": {"output": "hello"}},
        ],
        "edges": [{"id": "e1", "source": "start", "target": "greet"}],
    }


async def test_a_killed_embedded_worker_is_replaced_and_takes_the_next_run(tmp_path, pg_prefect):
    with postgres_database("fm_supervise") as database_url:
        env = stack_env(tmp_path, pg_prefect, database_url, KEY)
        serve, base = start_serve(tmp_path, env, workers=1)
        try:
            first_pid = int(STARTED.search(serve.output(100_000)).group(1))
            async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=60) as http:
                before = await save_and_execute(http, greeting(f"sup-a-{uuid.uuid4().hex[:6]}"))
                assert (await wait_final(http, before, timeout=120))["status"] == "completed"

                os.kill(first_pid, signal.SIGKILL)

                async def replaced() -> tuple[int, int] | None:
                    log = serve.output(100_000)
                    died, again = RESTARTED.search(log), AGAIN.search(log)
                    return (int(died.group(1)), int(again.group(1))) if died and again else None

                died, second_pid = await eventually(replaced, timeout=60, what="serve starting another worker")
                assert died == first_pid and second_pid != first_pid
                assert serve.alive()
                after = await save_and_execute(http, greeting(f"sup-b-{uuid.uuid4().hex[:6]}"))
                result = await wait_final(http, after, timeout=120)
            assert result["status"] == "completed", result
            async with PrefectClient(pg_prefect.api_url) as prefect:
                flow_run = await prefect.read_flow_run(uuid.UUID(result["flow_run_id"]))
            assert flow_run.infrastructure_pid.endswith(f":{second_pid}"), "taken by the new worker"
            assert _alive(second_pid) and not _alive(first_pid)
        finally:
            assert serve.stop() in (0, 143), serve.output()
        assert "starting another" not in serve.output(100_000).split("started again")[-1], "no restart at stop"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
