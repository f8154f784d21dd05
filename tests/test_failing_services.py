"""PostgreSQL, Redis and Prefect stopped for real while `flowmaestro serve` (API and one
worker) runs on them, then started again.

Every service is a private instance of this module (its own port and data), killed with
SIGKILL or frozen with SIGSTOP, so the rest of the suite keeps the machine's services.
While one is down the API answers 503 with Retry-After naming it (never a 500, never a
hang; an execute needs only the store, so it is accepted while Prefect is down), /health
says which is down, and a run in flight ends as it would have once the
service is back; nothing written before (workflows, executions, events) is lost.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from api.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from deployments.workflow_deployments import WORKFLOW_TAG
from flows.local_server import ServerInfo, healthy, start_server, stop
from tests.processes import Proc, free_port, stack_env, start_serve, wait_until
from tests.services import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.workers

KEY = "failing-" + uuid.uuid4().hex
ANSWER_WITHIN_S = 20
"""The longest any request may take while a service is down or frozen (the bounds are
5 s for a check, 5 s to connect and 10 s per query on PostgreSQL, FLOWMAESTRO_PREFECT_TIMEOUT_S)."""
PREFECT_TIMEOUT_S = 12
"""Below ANSWER_WITHIN_S, and long enough for most saves on this stack's SQLite Prefect server
while a worker writes to it on a loaded CI machine (5 s was not); a save that takes longer
answers ``deployment_pending`` and is made again (``deploy``)."""
IN_FLIGHT_S = 2 * PREFECT_TIMEOUT_S + 10
"""The delay of the run in flight while Prefect is killed (see test_prefect_killed_then_back)."""


@dataclass
class Stack:
    home: object
    postgres: PrivatePostgres
    redis: PrivateRedis
    prefect_home: object
    prefect: ServerInfo
    serve: Proc
    api: httpx.Client

    def prefect_kill(self) -> None:
        os.killpg(self.prefect.pid, signal.SIGKILL)

    def prefect_start(self) -> None:
        port = int(self.prefect.api_url.rsplit(":", 1)[1].split("/")[0])
        self.prefect = start_server(self.prefect_home, port, auth=False)
        assert self.prefect.api_url.endswith(f":{port}/api"), "the Prefect port was taken meanwhile"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("failing")
    postgres, redis = PrivatePostgres(root / "postgres"), PrivateRedis(root / "redis")
    postgres.start()
    redis.start()
    prefect_home = root / "prefect"
    prefect = start_server(prefect_home, free_port(), auth=False)  # its clients carry no auth string
    env = stack_env(
        root,
        prefect,
        postgres.url,
        KEY,
        FLOWMAESTRO_API_KEYS=f"tester:{KEY}",
        FLOWMAESTRO_REDIS_URL=redis.url,
        FLOWMAESTRO_CACHE_LOCK_REDIS_URL=redis.url,
        FLOWMAESTRO_PREFECT_TIMEOUT_S=str(PREFECT_TIMEOUT_S),
        FLOWMAESTRO_WORKER_GRACE_S="2",
        FLOWMAESTRO_WORK_POOL=f"failing-{uuid.uuid4().hex[:6]}",
    )
    serve, base = start_serve(root, env, workers=1)
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    stack = Stack(root, postgres, redis, prefect_home, prefect, serve, api)
    try:
        yield stack
    finally:
        api.close()
        serve.stop()
        stop(stack.prefect_home)
        redis.stop()
        postgres.stop()


@pytest.fixture(autouse=True)
def services_back(stack):
    """Every test starts on a whole stack: what a test before stopped is back and seen by the
    API, and nothing a test started still runs (its runs are awaited by the test itself)."""
    wait_until(lambda: set(health(stack.api).values()) == {"ok"}, timeout=60, what="every service seen up")


def slow_canvas(seconds: float) -> dict:
    return {
        "name": f"slow-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "wait", "type": "delay", "data": {"seconds": seconds}},
            {"id": "end", "type": "end", "data": {"output": "done"}},
        ],
        "edges": [{"id": "a", "source": "start", "target": "wait"}, {"id": "b", "source": "wait", "target": "end"}],
    }


def slow_workflow(api: httpx.Client, seconds: float) -> str:
    return save(api, slow_canvas(seconds))


def save(api: httpx.Client, raw: dict) -> str:
    """Save ``raw``: its id, once its Prefect deployment is made."""
    saved = api.post("/api/workflows", json={"canvas": raw})
    assert saved.status_code == 201, saved.text
    deploy(api, saved.json()["id"], raw, saved)
    return saved.json()["id"]


def deploy(api: httpx.Client, workflow_id: str, raw: dict, answer: httpx.Response | None = None) -> None:
    """Save ``raw`` again (``PUT``: unchanged, the deployment made) until the answer has no
    ``deployment_pending``: a save on this loaded SQLite Prefect server can take longer than
    PREFECT_TIMEOUT_S. ``answer``: a save's answer already had."""
    deadline = time.monotonic() + 120
    while answer is None or (codes := [w["code"] for w in answer.json()["warnings"] if w["code"] != "unchanged"]):
        assert answer is None or codes == ["deployment_pending"], answer.text
        assert time.monotonic() < deadline, f"no deployment within 120 s: {answer.text if answer else ''}"
        answer = api.put(f"/api/workflows/{workflow_id}", json={"canvas": raw})
        assert answer.status_code == 200, answer.text


def deployments_of(stack: Stack, workflow_id: str) -> int:
    """How many deployments the Prefect server has for the workflow."""
    found = httpx.post(
        f"{stack.prefect.api_url}/deployments/filter",
        json={"deployments": {"tags": {"all_": [WORKFLOW_TAG.format(id=workflow_id)]}}},
        timeout=30,
    )
    found.raise_for_status()
    return len(found.json())


def start_running(api: httpx.Client, workflow_id: str) -> str:
    """Execute and wait until the worker runs it (its delay node started)."""
    run_id = api.post(f"/api/workflows/{workflow_id}/execute", json={}).json()["execution_id"]
    wait_until(
        lambda: api.get(f"/api/executions/{run_id}").json()["nodes"].get("wait", {}).get("status") == "running",
        timeout=120,
        what=f"run {run_id} running its delay node",
    )
    return run_id


def approval_waiting(api: httpx.Client) -> str:
    """A run paused on an approval ``ask`` (``approved`` leads to the output ``yes``)."""
    raw = {
        "name": f"ask-{uuid.uuid4().hex[:6]}",
        "nodes": [
            {"id": "start", "type": "start", "data": {}},
            {"id": "ask", "type": "approval", "data": {}},
            {"id": "end", "type": "end", "data": {"output": "yes"}},
        ],
        "edges": [
            {"id": "a", "source": "start", "target": "ask"},
            {"id": "b", "source": "ask", "target": "end", "sourceHandle": "approved"},
        ],
    }
    run_id = api.post(f"/api/workflows/{save(api, raw)}/execute", json={}).json()["execution_id"]
    wait_until(
        lambda: api.get(f"/api/executions/{run_id}").json()["status"] == "paused",
        timeout=120,
        what=f"run {run_id} waiting for its approval",
    )
    return run_id


def refused(answer: httpx.Response, service: str) -> None:
    """A 503 that names ``service`` and says when to retry; no traceback."""
    assert answer.status_code == 503, (
        f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text}"
    )
    body = answer.json()
    assert body["service"] == service and answer.headers["retry-after"].isdigit(), answer.text
    assert "Traceback" not in answer.text and 'File "' not in answer.text


def timed(call, *args, **kwargs) -> httpx.Response:
    started = time.monotonic()
    answer = call(*args, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN_S, f"{args[0]} took {elapsed:.1f} s"
    return answer


def health(api: httpx.Client) -> dict[str, str]:
    answer = timed(api.get, "/health")
    assert answer.status_code == (200 if set(answer.json()["checks"].values()) == {"ok"} else 503)
    return answer.json()["checks"]


def wait_ended(api: httpx.Client, run_id: str, timeout: float = 120) -> dict:
    def ended():
        answer = api.get(f"/api/executions/{run_id}")
        return (
            answer.status_code == 200
            and answer.json()["status"] in ("completed", "failed", "cancelled")
            and answer.json()
        )

    return wait_until(ended, timeout=timeout, interval=0.5, what=f"run {run_id} ending")


def events_of(api: httpx.Client, run_id: str) -> list[tuple[int, str]]:
    """The run's whole stream: (id, event type) in order."""
    with api.stream("GET", f"/api/executions/{run_id}/stream", timeout=30) as answer:
        assert answer.status_code == 200
        lines = list(answer.iter_lines())
    ids = [int(line[4:]) for line in lines if line.startswith("id: ")]
    types = [line[7:] for line in lines if line.startswith("event: ")]
    return list(zip(ids, types))


def assert_whole(events: list[tuple[int, str]], final: str = "execution:completed") -> None:
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1)), events
    assert events[0][1] == "execution:started" and events[-1][1] == final, events
    kinds = [kind for _, kind in events]
    assert kinds.count("node:started") == kinds.count("node:completed") == 3, events


def test_postgres_killed_then_back(stack):
    api = stack.api
    workflow_id = slow_workflow(api, 3)
    before = start_running(api, workflow_id)
    stack.postgres.kill()
    for method, path in (
        ("GET", "/api/workflows"),
        ("GET", f"/api/workflows/{workflow_id}"),
        ("POST", f"/api/workflows/{workflow_id}/execute"),
        ("GET", "/api/executions"),
        ("GET", f"/api/executions/{before}"),
        ("GET", f"/api/executions/{before}/stream"),
    ):
        refused(timed(api.request, method, path, json={} if method == "POST" else None), "database")
    checks = health(api)
    assert checks["database"].startswith("error") and checks["prefect"] == checks["redis"] == "ok", checks
    time.sleep(4)  # the run's delay ends while the store is down: its worker must keep the result
    stack.postgres.start()
    wait_until(lambda: health(api)["database"] == "ok", timeout=30, what="the API seeing PostgreSQL again")
    result = wait_ended(api, before)
    assert result["status"] == "completed" and result["output"] == "done", result
    assert_whole(events_of(api, before))
    assert [w["id"] for w in api.get("/api/workflows").json()].count(workflow_id) == 1
    after = api.post(f"/api/workflows/{workflow_id}/execute", json={})
    assert after.status_code == 202, after.text
    assert wait_ended(api, after.json()["execution_id"])["status"] == "completed"  # not left to the next test


def test_postgres_frozen_answers_503_in_bounded_time(stack):
    api = stack.api
    stack.postgres.pause()
    try:
        checks = health(api)
        assert checks["database"].startswith("unreachable") and checks["prefect"] == "ok", checks
        refused(timed(api.get, "/api/workflows"), "database")
    finally:
        stack.postgres.resume()
    wait_until(lambda: health(api)["database"] == "ok", timeout=30, what="the API seeing PostgreSQL again")
    assert api.get("/api/workflows").status_code == 200


def test_redis_killed_then_back(stack):
    api = stack.api
    workflow_id = slow_workflow(api, 2)
    hook = api.post(f"/api/workflows/{workflow_id}/webhooks", json={"name": "h"}).json()
    before = start_running(api, workflow_id)
    stack.redis.kill()
    refused(timed(api.get, f"/api/executions/{before}/stream"), "redis")
    now = str(int(time.time()))
    signed = {TIMESTAMP_HEADER: now, SIGNATURE_HEADER: sign(hook["secret"], now, b"{}")}
    refused(timed(api.post, f"/hooks/{hook['id']}", content=b"{}", headers=signed), "redis")  # its rate limit
    checks = health(api)
    assert checks["redis"].startswith("error") and checks["database"] == checks["prefect"] == "ok", checks
    during = api.post(f"/api/workflows/{workflow_id}/execute", json={})  # Redis is not needed to start one
    assert during.status_code == 202, during.text
    time.sleep(3)  # the first run publishes events meanwhile; its writer keeps them until Redis is back
    stack.redis.start()
    wait_until(lambda: health(api)["redis"] == "ok", timeout=30, what="the API seeing Redis again")
    assert wait_ended(api, before)["status"] == "completed"
    assert_whole(events_of(api, before))
    # Started while Redis was down. If a worker took it then, its flow could not open its event
    # log and failed saying so, and a retry now runs it; if it was taken once Redis was back
    # (the worker's poll decides), it just ran. Either way nothing is lost.
    during_id = during.json()["execution_id"]
    ended = wait_ended(api, during_id)
    if ended["status"] == "failed":
        assert "ConnectionError" in str(ended["error"]), ended
        assert api.post(f"/api/executions/{during_id}/retry", json={}).status_code == 202
        ended = wait_ended(api, during_id)
    assert ended["status"] == "completed", ended


def test_prefect_killed_then_back(stack):
    api = stack.api
    finished = api.post(f"/api/workflows/{slow_workflow(api, 0.1)}/execute", json={}).json()["execution_id"]
    assert wait_ended(api, finished)["status"] == "completed"
    # The run in flight outlasts the kill and a request answered at the API's Prefect timeout
    # (asked first, while it surely runs), then ends while Prefect is away: delays run inline,
    # needing no Prefect to end.
    workflow_id = slow_workflow(api, IN_FLIGHT_S)
    waiting = approval_waiting(api)
    before = start_running(api, workflow_id)
    delay_over = time.monotonic() + IN_FLIGHT_S  # its delay started before this
    stack.prefect_kill()
    wait_until(lambda: not healthy(stack.prefect.api_url), timeout=30, what="the Prefect server gone")
    refused(timed(api.get, f"/api/executions/{before}"), "prefect")  # in flight: its state is Prefect's
    # A run started while Prefect is away is accepted all the same (the store is enough); its
    # flow run is created once Prefect is back (docs/operations.md#accepting-runs).
    accepted = timed(api.post, f"/api/workflows/{workflow_id}/execute", json={})
    assert accepted.status_code == 202, accepted.text
    while_away = accepted.json()["execution_id"]
    assert api.get(f"/api/executions/{while_away}").json()["flow_run_id"] is None
    assert timed(api.get, f"/api/executions/{finished}").json()["output"] == "done"  # ended: the store is enough
    checks = health(api)
    assert checks["prefect"].startswith(("error", "unreachable")) and checks["database"] == "ok", checks
    # A workflow saved while Prefect is away is saved; its deployment follows at the next save.
    raw = slow_canvas(0.1)
    saved_away = timed(api.post, "/api/workflows", json={"canvas": raw})
    assert saved_away.status_code == 201, saved_away.text
    assert [w["code"] for w in saved_away.json()["warnings"]] == ["deployment_pending"], saved_away.text
    time.sleep(max(0.0, delay_over + 1 - time.monotonic()))  # the run's delay ends while Prefect is away
    stack.prefect_start()
    wait_until(lambda: health(api)["prefect"] == "ok", timeout=60, what="the API seeing Prefect again")
    assert deployments_of(stack, saved_away.json()["id"]) == 0
    deploy(api, saved_away.json()["id"], raw)  # the same canvas again: "unchanged", and deployed
    assert deployments_of(stack, saved_away.json()["id"]) == 1
    result = wait_ended(api, before, timeout=180)
    assert result["status"] == "completed", result
    assert_whole(events_of(api, before))
    again = api.post(f"/api/workflows/{workflow_id}/execute", json={})
    assert again.status_code == 202, again.text
    # The approval asked before the outage is still waiting, and answered now, the run goes on.
    pending = wait_until(
        lambda: api.get(f"/api/executions/{waiting}").json()["pending_approvals"],
        timeout=60,
        what="the approval listed again",
    )
    assert [a["node_id"] for a in pending] == ["ask"]
    answer = api.post(f"/api/executions/{waiting}/resume", json={"node_id": "ask", "input": {"approved": True}})
    assert answer.status_code == 200, answer.text
    approved = wait_ended(api, waiting)
    assert approved["status"] == "completed" and approved["output"] == "yes", approved
    assert wait_ended(api, again.json()["execution_id"], timeout=180)["status"] == "completed"
    assert wait_ended(api, while_away, timeout=180)["status"] == "completed"
