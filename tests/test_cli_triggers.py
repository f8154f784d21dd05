"""``flowmaestro schedules`` and ``flowmaestro webhooks`` against a real API over HTTP
(uvicorn in a thread, on SQLite, with the session's Prefect server)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from api.app import create_app
from api.settings import ApiSettings
from cli.main import app as cli
from tests.processes import free_port
from tests.support import canvas, node

pytestmark = pytest.mark.prefect
KEY = "cli-key"


@pytest.fixture(scope="module")
def api_url(prefect_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-triggers")
    settings = ApiSettings(
        database_url=f"sqlite+aiosqlite:///{home / 'api.db'}",
        api_keys=f"cli:{KEY}",
        home=home,
        work_pool=f"cli-{uuid.uuid4().hex[:6]}",
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def run(api_url: str, *args: str) -> tuple[int, object, str]:
    result = CliRunner().invoke(cli, list(args), env={"FLOWMAESTRO_API_URL": api_url, "FLOWMAESTRO_API_KEY": KEY})
    try:
        answer = json.loads(result.stdout) if result.stdout.strip() else None
    except ValueError:
        answer = result.stdout
    return result.exit_code, answer, result.stderr


def test_schedules_and_webhooks_from_the_command_line(api_url):
    raw = canvas(
        [node("start", "start"), node("greet", data={"output": "Hi {{ inputs.who }}"})],
        [("start", "greet")],
        name=f"cli-{uuid.uuid4().hex[:6]}",
        inputs={"who": {"type": "string", "required": True}},
    )
    saved = httpx.post(
        f"{api_url}/api/workflows", json={"canvas": raw}, headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    workflow_id = saved.json()["id"]

    code, added, _ = run(
        api_url,
        "schedules",
        "add",
        workflow_id,
        "--cron",
        "0 9 * * 1-5",
        "--timezone",
        "Europe/Paris",
        "--inputs-json",
        '{"who": "Ada"}',
        "--overlap",
        "skip",
    )
    assert code == 0 and added["cron"] == "0 9 * * 1-5" and added["overlap"] == "skip", added
    code, updated, _ = run(api_url, "schedules", "update", workflow_id, added["id"], "--paused")
    assert code == 0 and updated["active"] is False
    code, listed, _ = run(api_url, "schedules", "list", workflow_id)
    assert code == 0 and [(s["id"], s["active"]) for s in listed] == [(added["id"], False)]
    code, _, stderr = run(api_url, "schedules", "add", workflow_id, "--interval", "5", "--inputs-json", '{"who": "x"}')
    assert code == 2 and "interval_s" in stderr
    code, _, stderr = run(api_url, "schedules", "add", workflow_id, "--cron", "* * * * *")
    assert code == 2 and "inputs.who" in stderr
    code, _, _ = run(api_url, "schedules", "delete", workflow_id, added["id"])
    assert code == 0 and run(api_url, "schedules", "list", workflow_id)[1] == []

    code, hook, _ = run(api_url, "webhooks", "add", workflow_id, "--name", "ci")
    assert code == 0 and hook["secret"].startswith("whsec_") and hook["url"] == f"/hooks/{hook['id']}"
    code, rotated, _ = run(api_url, "webhooks", "rotate", workflow_id, hook["id"])
    assert code == 0 and rotated["secret"] != hook["secret"]
    code, hooks, _ = run(api_url, "webhooks", "list", workflow_id)
    assert code == 0 and [h["id"] for h in hooks] == [hook["id"]] and "secret" not in hooks[0]
    assert run(api_url, "webhooks", "delete", workflow_id, hook["id"])[0] == 0
    assert run(api_url, "webhooks", "delete", workflow_id, hook["id"])[0] == 2  # 404 now


def test_the_api_down_exits_1_and_deploy_is_gone():
    result = CliRunner().invoke(
        cli,
        ["schedules", "list", "w"],
        env={"FLOWMAESTRO_API_URL": f"http://127.0.0.1:{free_port()}", "FLOWMAESTRO_API_KEY": KEY},
    )
    assert result.exit_code == 1 and "did not answer" in result.stderr
    assert CliRunner().invoke(cli, ["deploy", "x.json"]).exit_code == 2  # no such command


def test_retry_from_the_command_line(api_url):
    """No worker serves this API's pool: a run stays pending, is refused a retry, is
    cancelled, and then retried (pending again)."""
    raw = canvas([node("start", "start"), node("t")], [("start", "t")], name=f"cli-retry-{uuid.uuid4().hex[:6]}")
    auth = {"Authorization": f"Bearer {KEY}"}
    workflow_id = httpx.post(f"{api_url}/api/workflows", json={"canvas": raw}, headers=auth, timeout=60).json()["id"]
    run_id = httpx.post(f"{api_url}/api/workflows/{workflow_id}/execute", json={}, headers=auth, timeout=60).json()[
        "execution_id"
    ]
    env = {"FLOWMAESTRO_API_URL": api_url, "FLOWMAESTRO_API_KEY": KEY}
    refused = CliRunner().invoke(cli, ["retry", run_id], env=env)
    assert refused.exit_code == 2, refused.output
    assert "only a failed or cancelled run can be retried" in " ".join(refused.stderr.split())  # rich wraps lines
    assert (
        httpx.post(f"{api_url}/api/executions/{run_id}/cancel", headers=auth, timeout=60).json()["status"]
        == "cancelled"
    )
    retried = CliRunner().invoke(cli, ["retry", run_id], env=env)
    assert retried.exit_code == 0 and f"{run_id}: pending" in " ".join(retried.stdout.split()), retried.output
    assert httpx.get(f"{api_url}/api/executions/{run_id}", headers=auth, timeout=60).json()["status"] == "pending"
    unknown = CliRunner().invoke(cli, ["retry", str(uuid.uuid4())], env=env)
    assert unknown.exit_code == 2 and "not found" in " ".join(unknown.stderr.split())
