"""Issue 31, major 5: on the embedded default (``flowmaestro serve`` with no PREFECT_API_URL:
it starts Prefect on SQLite, the store on SQLite, one worker), a burst of executes used to
turn into 503s once Prefect on SQLite fell behind creating their flow runs. The API now
accepts runs in its store and creates their flow runs after (docs/operations.md#accepting-runs):
every execute of the burst answers 202, and every run completes."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.processes import embedded_env, start_serve
from tests.support import wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.workers]
BURST = 50


async def test_a_burst_of_executes_on_the_embedded_default_all_answer_202_and_complete(tmp_path):
    from flows.local_server import stop

    home = tmp_path / "home"
    home.mkdir()
    key = "key-" + uuid.uuid4().hex
    env = embedded_env(home, key)
    for name in ("FLOWMAESTRO_DATABASE_URL", "FLOWMAESTRO_REDIS_URL", "FLOWMAESTRO_EVENT_LOG_URL"):
        env.pop(name, None)  # the defaults: SQLite under the home
    serve, base = start_serve(tmp_path, env, timeout=600)
    try:
        limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120, limits=limits
        ) as api:
            hello = {
                "name": "hello",
                "inputs": {"n": {"type": "number", "required": True}},
                "nodes": [
                    {"id": "start", "type": "start", "data": {}},
                    {"id": "greet", "type": "transform", "data": {"output": "{{ inputs.n }}"}},
                ],
                "edges": [{"id": "a", "source": "start", "target": "greet"}],
            }
            saved = await api.post("/api/workflows", json={"canvas": hello})
            assert saved.status_code == 201, saved.text
            workflow = saved.json()["id"]
            answers = await asyncio.gather(
                *(api.post(f"/api/workflows/{workflow}/execute", json={"inputs": {"n": n}}) for n in range(BURST))
            )
            assert [a.status_code for a in answers] == [202] * BURST, [a.text for a in answers if a.status_code != 202]
            runs = [a.json()["execution_id"] for a in answers]
            assert len(set(runs)) == BURST
            results = [await wait_final(api, run_id, timeout=300) for run_id in runs]
            assert [r["status"] for r in results] == ["completed"] * BURST, [
                r for r in results if r["status"] != "completed"
            ][:2]
            assert [r["output"] for r in results] == [{"greet": n} for n in range(BURST)]
            assert len({r["flow_run_id"] for r in results}) == BURST
    finally:
        serve.stop(60)
        stop(home)  # the embedded server this serve started
