"""No secret in anything a run leaves behind.

Two runs on a real `flowmaestro serve`: one executed with the API key, one delivered by a
signed webhook; each calls an http node with a bearer token from FLOWMAESTRO_SECRET_TOKEN
against a server that echoes the request's headers back (so the token comes back in the
response), and one http node that fails. Then everything is swept for the API key, the token
(bare and as its header value) and the webhook secret: run results, events, every API answer
and error body, the Prefect flow run's parameters, its task runs and their states, its
artifacts and logs, the server's and workers' logs, the store's database file.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.processes import wait_until

pytestmark = pytest.mark.prefect


def leaky_canvas(echo_url: str) -> dict:
    call = {"url": f"{echo_url}/echo?echo=1", "auth": {"type": "bearer", "token_secret": "TOKEN"}}
    return {
        "name": f"leaky-{uuid.uuid4().hex[:6]}",
        "inputs": {"who": {"type": "string"}},
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "fetch", "type": "http", "data": call},
            {"id": "refused", "type": "http", "data": {**call, "expected_status": [418]}},
            {"id": "caught", "type": "transform", "data": {"output": "{{ nodes['refused'] }}"}},
            {"id": "end", "type": "end", "data": {"output": {"echo": "{{ fetch.body }}", "who": "{{ inputs.who }}"}}},
        ],
        "edges": [
            {"id": "a", "source": "start", "target": "fetch"},
            {"id": "b", "source": "start", "target": "refused"},
            {"id": "c", "source": "refused", "target": "caught", "sourceHandle": "error"},
            {"id": "d", "source": "fetch", "target": "end"},
        ],
    }


def prefect_records(api_url: str, run_id: str) -> list[str]:
    """What Prefect keeps of the run, as JSON text: the flow run, task runs, artifacts, logs."""
    by_run = {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200}
    with httpx.Client(base_url=api_url, timeout=30) as prefect:
        # Task runs reach Prefect's database through its recorder, a little after the run.
        def http_tasks_recorded() -> str | None:
            text = prefect.post("/task_runs/filter", json=by_run).text
            return text if {"fetch", "refused"} <= {task["name"] for task in json.loads(text)} else None

        tasks_text = wait_until(http_tasks_recorded, timeout=60, what=f"Prefect recording the task runs of {run_id}")

        def summary_kept() -> str | None:  # sent after the task runs, in the background
            text = prefect.post("/artifacts/filter", json=by_run).text
            return text if json.loads(text) else None

        artifacts_text = wait_until(summary_kept, timeout=60, what=f"Prefect keeping the summary artifact of {run_id}")
        found = [prefect.get(f"/flow_runs/{run_id}").text, tasks_text, artifacts_text]
        for path, body in (("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}),):
            answer = prefect.post(path, json=body)
            assert answer.status_code == 200, answer.text
            found.append(answer.text)
        for task in json.loads(tasks_text):
            found.append(prefect.get(f"/task_runs/{task['id']}").text)
    return found


def test_no_secret_in_anything_a_run_leaves(served, counting, prefect_server):
    owner = {"Authorization": f"Bearer {served.owner_key}"}
    with httpx.Client(base_url=served.base, headers=owner, timeout=60) as api:
        saved = api.post("/api/workflows", json={"canvas": leaky_canvas(counting.url)})
        assert saved.status_code == 201, saved.text
        workflow_id = saved.json()["id"]
        hook = api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "leaky"}).json()
        by_api = api.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {"who": "api"}}).json()[
            "execution_id"
        ]
        body = json.dumps({"who": "hook"}).encode()
        now = str(int(time.time()))
        delivered = api.post(
            f"/hooks/{hook['id']}",
            content=body,
            params={"wait": 30},
            headers={"Authorization": "", TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(hook["secret"], now, body)},
        )
        assert delivered.status_code in (200, 202), delivered.text
        by_hook = delivered.json().get("execution_id") or delivered.json()["id"]

        seen: list[str] = [saved.text, delivered.text]
        for run_id in (by_api, by_hook):
            result = wait_until(
                lambda: (
                    (r := api.get(f"/api/executions/{run_id}")).json()["status"]  # noqa: B023 (called here)
                    in ("completed", "failed")
                    and r
                ),
                timeout=120,
                what=f"run {run_id} ending",
            )
            assert result.json()["status"] == "completed", result.text
            assert result.json()["nodes"]["refused"]["status"] == "failed"  # its error is swept too
            seen.append(result.text)
            seen.append(api.get(f"/api/executions/{run_id}/stream", timeout=30).text)
            seen += prefect_records(prefect_server.api_url, result.json()["flow_run_id"])
        for path in (
            "/api/executions",
            f"/api/workflows/{workflow_id}",
            f"/api/workflows/{workflow_id}/webhooks",
            "/api/dead-letters",
        ):
            seen.append(api.get(path).text)
        metrics = api.get("/metrics", headers={"Authorization": f"Bearer {served.metrics_key}"})
        assert metrics.status_code == 200, metrics.text
        seen.append(metrics.text)
        # Error bodies: a wrong key, a wrong signature.
        seen.append(api.get("/api/workflows", headers={"Authorization": f"Bearer {served.owner_key}x"}).text)
        seen.append(
            api.post(
                f"/hooks/{hook['id']}",
                content=body,
                headers={
                    "Authorization": "",
                    TIMESTAMP_HEADER: now,
                    SIGNATURE_HEADER: sign(hook["secret"], now, b"other"),
                },
            ).text
        )
    assert sum("[redacted]" in text for text in seen) >= 4, "the echoed token should come back redacted"
    files = sorted(served.home.glob("*.log")) + sorted(served.home.glob("store.db*")) + [served.prefect_log]
    assert len(files) >= 3 and all(f.exists() for f in files), files
    secrets = {"the API key": served.owner_key, "the token": served.secret, "the webhook secret": hook["secret"]}
    for what, secret in secrets.items():
        for i, text in enumerate(seen):
            assert secret not in text, f"{what} in answer {i}: {text[:500]}"
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"{what} in {path}"
