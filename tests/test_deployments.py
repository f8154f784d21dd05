"""The generic flow served as a Prefect deployment: a run triggered through Prefect's
API is picked up by `flowmaestro deploy` and completes with the canvas's result."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from deployments.serve import build_deployment

pytestmark = [pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]
ROOT = Path(__file__).resolve().parent.parent


def test_deployment_carries_the_canvas_and_the_schedule():
    canvas = {"name": "nightly", "nodes": [{"id": "t", "type": "transform", "data": {"output": 1}}], "edges": []}
    deployment = build_deployment(canvas, {"x": 1}, cron="0 3 * * *", timezone="Europe/Paris")
    assert deployment.name == "nightly"
    assert deployment.parameters == {"canvas": canvas, "inputs": {"x": 1}}
    assert deployment.schedules[0].schedule.cron == "0 3 * * *"
    assert deployment.schedules[0].schedule.timezone == "Europe/Paris"


async def test_flowmaestro_deploy_serves_runs_triggered_through_prefect(tmp_path):
    name = f"deployed-{uuid.uuid4().hex[:6]}"
    canvas = {"name": name, "inputs": {"who": {"type": "string", "required": True}},
              "nodes": [{"id": "hi", "type": "transform", "data": {"output": "hi {{ inputs.who }}"}}], "edges": []}
    path = tmp_path / "canvas.json"
    path.write_text(json.dumps(canvas))
    env = dict(os.environ, PREFECT_RUNNER_POLL_FREQUENCY="1")
    process = subprocess.Popen([sys.executable, "-m", "cli", "deploy", str(path), "--input", "who=Ada"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        async with get_client() as client:
            for _ in range(120):
                try:
                    await client.read_deployment_by_name(f"flowmaestro/{name}")
                    break
                except Exception:
                    assert process.poll() is None, process.stdout.read().decode()[-3000:]
                    await asyncio.sleep(0.5)
        flow_run = await run_deployment(f"flowmaestro/{name}", parameters={"inputs": {"who": "Grace"}},
                                        timeout=120)
        assert flow_run.state.is_completed(), flow_run.state
        result = await flow_run.state.result()
        assert result["output"] == {"hi": "hi Grace"}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
