"""Budgets on real workers: the API's routes, a budget failing a node, one pausing the run
until a person lets it go on, and one shared by two concurrent runs on two worker processes
never overspent by more than one request (the local OpenAI-compatible server counts them)."""

from __future__ import annotations

import asyncio
import json
import uuid
from functools import partial
from typing import Any

import httpx
import pytest

from tests.openai_server import FakeOpenAI, Reply
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.support import canvas, node, save, wait_execution, wait_final

final = partial(wait_final, timeout=150)
KEY = "budgets-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "budget-model"
PRICES = {MODEL: {"input_per_1m": 1_000_000, "output_per_1m": 1_000_000}}  # one USD a token: easy sums

pytestmark = [pytest.mark.prefect, pytest.mark.workers]


@pytest.fixture(scope="module")
def model_server():
    with FakeOpenAI().running() as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect, model_server):
    home = tmp_path_factory.mktemp("budgets")
    with postgres_database("fm_budgets") as database_url:
        yield (
            home,
            stack_env(
                home,
                pg_prefect,
                database_url,
                KEY,
                FLOWMAESTRO_OPENAI_BASE_URL=model_server.base_url,
                OPENAI_API_KEY="sk-budget-test",
                FLOWMAESTRO_LLM_PRICES=json.dumps(PRICES),
            ),
        )


@pytest.fixture(scope="module")
def api(stack):
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def workers(stack, api):
    """Two worker processes taking one run each at a time: two runs started together run in both."""
    home, env = stack
    started = [start_worker(home, env, name=f"bud{i}-{uuid.uuid4().hex[:4]}", limit=1) for i in range(2)]
    yield started
    for worker in started:
        worker.stop()


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30)


def chain(name: str, calls: int) -> dict[str, Any]:
    """start -> m1 -> ... -> m<calls>: one model request each, the same prompt (the same tokens)."""
    ids = [f"m{i}" for i in range(1, calls + 1)]
    nodes = [node("start", "start")] + [node(i, "llm", data={"prompt": "Say hello", "model": MODEL}) for i in ids]
    edges = list(zip(["start", *ids], ids))
    return canvas(nodes, edges, name=name)


async def budget(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    made = await http.post("/api/budgets", json=fields)
    assert made.status_code == 201, made.text
    return made.json()


def requests_for(server: FakeOpenAI, since: int) -> int:
    return len(server.requests) - since


async def test_the_routes_check_what_they_are_given(api):
    async with client(api) as http:
        assert (await http.post("/api/budgets", json={"scope": "workflow", "period": "day", "max_tokens": 5})).json()[
            "issues"
        ][0]["field"] == "workflow_id"
        refused = await http.post("/api/budgets", json={"scope": "run", "period": "month", "max_tokens": 5})
        assert refused.status_code == 422 and refused.json()["issues"][0]["field"] == "period", refused.text
        refused = await http.post("/api/budgets", json={"scope": "owner", "period": "day"})
        assert refused.status_code == 422 and refused.json()["issues"][0]["field"] == "max_cost_usd", refused.text
        refused = await http.post("/api/budgets", json={"scope": "owner", "period": "day", "max_tokens": -1})
        assert refused.status_code == 422 and "max_tokens" in refused.text, refused.text
        refused = await http.post(
            "/api/budgets",
            json={"scope": "workflow", "workflow_id": str(uuid.uuid4()), "period": "day", "max_tokens": 5},
        )
        assert refused.status_code == 422 and refused.json()["issues"][0]["field"] == "workflow_id", refused.text
        made = await budget(http, scope="owner", period="month", max_cost_usd=3.5, on_exceed="pause")
        assert (made["scope"], made["period"], made["max_cost_usd"], made["max_tokens"]) == (
            "owner",
            "month",
            3.5,
            None,
        )
        changed = await http.patch(f"/api/budgets/{made['id']}", json={"max_tokens": 9, "max_cost_usd": None})
        assert changed.status_code == 200 and (changed.json()["max_tokens"], changed.json()["max_cost_usd"]) == (
            9,
            None,
        )
        emptied = await http.patch(f"/api/budgets/{made['id']}", json={"max_tokens": None})
        assert emptied.status_code == 422, emptied.text
        one = (await http.get(f"/api/budgets/{made['id']}")).json()
        assert one["spent"] == [] and one["max_tokens"] == 9
        assert made["id"] in [b["id"] for b in (await http.get("/api/budgets")).json()]
        assert (await http.delete(f"/api/budgets/{made['id']}")).status_code == 204
        assert (await http.get(f"/api/budgets/{made['id']}")).status_code == 404


async def test_a_budget_fails_the_node_whose_request_would_exceed_it(api, workers, model_server):
    async with client(api) as http:
        saved = await save(http, chain(f"fail-{uuid.uuid4().hex[:6]}", 4))
        # A workflow's budget per run: room for two requests and a half.
        first = len(model_server.requests)
        probe = await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})
        probed = await final(http, probe.json()["execution_id"])
        assert probed["status"] == "completed", probed
        tokens = sum(probed["nodes"]["m1"]["output"]["usage"][k] for k in ("input_tokens", "output_tokens"))
        assert requests_for(model_server, first) == 4
        made = await budget(
            http, scope="run", workflow_id=saved["id"], period="run", max_tokens=int(2.5 * tokens), on_exceed="fail"
        )
        first = len(model_server.requests)
        run_id = (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()["execution_id"]
        result = await final(http, run_id)
        assert result["status"] == "failed", result
        error = result["nodes"]["m4"]["error"]
        assert error["type"] == "budget_exceeded" and made["id"] in error["message"], error
        assert [result["nodes"][f"m{i}"]["status"] for i in (1, 2, 3)] == ["completed"] * 3
        assert requests_for(model_server, first) == 3  # the fourth was never sent
        spent = (await http.get(f"/api/budgets/{made['id']}")).json()["spent"]
        assert spent == [
            {"window": f"run:{run_id}", "cost_usd": 3.0 * tokens, "tokens": 3 * tokens, "requests": 3, "in_flight": 0}
        ], spent
        await http.delete(f"/api/budgets/{made['id']}")


async def test_a_budget_pauses_the_run_until_a_person_lets_it_go_on(api, workers, model_server):
    async with client(api) as http:
        saved = await save(http, chain(f"pause-{uuid.uuid4().hex[:6]}", 2))
        made = await budget(
            http, scope="workflow", workflow_id=saved["id"], period="day", max_cost_usd=1.0, on_exceed="pause"
        )
        first = len(model_server.requests)
        run_id = (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()["execution_id"]
        paused = await wait_execution(
            http,
            run_id,
            lambda body: any(a.get("kind") == "budget" for a in body.get("pending_approvals") or []),
            timeout=120,
            what="a budget approval pending",
        )
        pending = next(a for a in paused["pending_approvals"] if a.get("kind") == "budget")
        assert pending["node_id"] == "m2" and made["id"] in pending["message"], pending
        assert requests_for(model_server, first) == 1  # m2's request waits for the person
        resumed = await http.post(
            f"/api/executions/{run_id}/resume", json={"node_id": "m2", "input": {"approved": True}}
        )
        assert resumed.status_code == 200, resumed.text
        result = await final(http, run_id)
        assert result["status"] == "completed", result
        assert requests_for(model_server, first) == 2
        spent = (await http.get(f"/api/budgets/{made['id']}")).json()["spent"]
        assert len(spent) == 1 and spent[0]["requests"] == 2 and spent[0]["in_flight"] == 0, spent
        await http.delete(f"/api/budgets/{made['id']}")


async def test_a_budget_shared_by_two_concurrent_runs_is_overspent_by_one_request_at_most(api, workers, model_server):
    slow = Reply(chunks=["a", "b", "c", "d"], chunk_delay_s=0.1)  # requests of ~0.4 s: the runs' overlap
    model_server.enqueue(*[slow] * 40)
    async with client(api) as http:
        saved = await save(http, chain(f"shared-{uuid.uuid4().hex[:6]}", 8))
        # Tokens of one request: the same prompt as every node of the chain.
        made = await budget(http, scope="workflow", workflow_id=saved["id"], period="day", max_tokens=10**9)
        first = len(model_server.requests)
        probe = (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()["execution_id"]
        probed = await final(http, probe)
        probe_tokens = sum(probed["nodes"]["m1"]["output"]["usage"][k] for k in ("input_tokens", "output_tokens"))
        await http.delete(f"/api/budgets/{made['id']}")
        cap = int(5.5 * probe_tokens)
        shared = await budget(http, scope="workflow", workflow_id=saved["id"], period="day", max_tokens=cap)
        first = len(model_server.requests)
        # The second request waits for a third: whichever run went first, the other has sent
        # its first request before the budget can be spent (workers may take the runs apart).
        model_server.hold = (first + 2, first + 3)
        try:
            run_ids = [
                (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()["execution_id"]
                for _ in range(2)
            ]
            results = await asyncio.gather(*(final(http, run_id) for run_id in run_ids))
        finally:
            model_server.hold = None
        sent = requests_for(model_server, first)
        spent = (await http.get(f"/api/budgets/{shared['id']}")).json()["spent"]
    model_server.reset()
    assert [r["status"] for r in results] == ["failed", "failed"], results
    assert all(r["error"]["type"] == "budget_exceeded" for r in results), [r["error"] for r in results]
    assert len(spent) == 1 and spent[0]["in_flight"] == 0, spent
    # The database counted what the server saw, and went past the cap by one request at most.
    assert spent[0]["requests"] == sent and spent[0]["tokens"] == sent * probe_tokens, (spent, sent)
    assert cap <= spent[0]["tokens"] < cap + probe_tokens, (spent, cap, probe_tokens)
    # Both runs spent from it (two worker processes), not one run alone.
    assert [r["nodes"]["m1"]["status"] for r in results] == ["completed", "completed"], results
