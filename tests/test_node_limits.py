"""Concurrency keys and rate limits of nodes (``concurrency``, ``rate_limit``): compiled with
precise issues, and enforced on real workers through Prefect's global concurrency limits,
as the local HTTP server sees the calls (its own start and end timestamps)."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from builder.compiler import compile_canvas
from flows.event_log.redis_streams import RedisEventLog
from tests.processes import postgres_database, stack_env, start_serve, start_worker
from tests.support import (
    canvas,
    compiled,
    eventually,
    make_registry,
    node,
    prefect_flow_run_id,
    save,
    save_and_execute,
    wait_final,
)

final = partial(wait_final, timeout=150)
KEY = "limits-test-key"
OWNER = "tester"  # stack_env's owner of KEY
AUTH = {"Authorization": f"Bearer {KEY}"}


# --- the compiler ---------------------------------------------------------------------------------


def _issues(raw: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    result = compile_canvas(raw, make_registry())
    return [(i.code, i.node_id, i.field) for i in result.errors]


def test_limits_are_compiled_into_the_plan_and_its_hash():
    plain = canvas([node("start", "start"), node("a", data={"output": 1})], [("start", "a")])
    limited = canvas(
        [
            node("start", "start"),
            node(
                "a",
                data={"output": 1},
                concurrency={"key": "api-{{ inputs.tenant }}", "limit": 2},
                rate_limit={"key": "api", "per_minute": 30},
            ),
        ],
        [("start", "a")],
        inputs={"tenant": {"type": "string"}},
    )
    plan = compiled(limited)
    a = plan.nodes["a"]
    assert (a.concurrency.key, a.concurrency.limit) == ("api-{{ inputs.tenant }}", 2)
    assert (a.rate_limit.key, a.rate_limit.limit) == ("api", 30)
    assert plan.to_dict()["nodes"][0]["concurrency"] == {"key": "api-{{ inputs.tenant }}", "limit": 2}
    # Another limit is another plan; a node without limits hashes as before they existed.
    other = compiled({**limited, "nodes": [limited["nodes"][0], {**limited["nodes"][1], "rate_limit": None}]})
    assert other.hash != plan.hash
    from builder.plan import content_hash

    assert content_hash(plan.to_dict()) == plan.hash
    assert compiled(plain).nodes["a"].concurrency is None


@pytest.mark.parametrize(
    ("fields", "expected_field"),
    [
        ({"concurrency": {"key": "k", "limit": 0}}, "concurrency.limit"),
        ({"concurrency": {"key": "", "limit": 1}}, "concurrency.key"),
        ({"concurrency": {"limit": 1}}, "concurrency.key"),
        ({"concurrency": {"key": "k", "limit": 1, "size": 2}}, "concurrency.size"),
        ({"rate_limit": {"key": "k", "per_minute": -1}}, "rate_limit.per_minute"),
        ({"rate_limit": {"key": "k", "per_minute": "often"}}, "rate_limit.per_minute"),
        ({"rate_limit": "k"}, "rate_limit"),
    ],
)
def test_bad_limit_values_are_issues_naming_the_field(fields, expected_field):
    raw = canvas([node("start", "start"), node("a", data={"output": 1}, **fields)], [("start", "a")])
    issues = _issues(raw)
    assert ("invalid_node", "a", expected_field) in issues, issues


def test_a_key_template_is_checked_like_any_template():
    raw = canvas(
        [
            node("start", "start"),
            node("a", data={"output": 1}, concurrency={"key": "{{ later.x }}", "limit": 1}),
            node("b", rate_limit={"key": "{{ inputs.x", "per_minute": 5}, data={"output": 2}),
            node("later", data={"output": 3}),
        ],
        [("start", "a"), ("a", "b"), ("b", "later")],
    )
    issues = _issues(raw)
    assert ("a", "concurrency.key") in {(n, f) for _, n, f in issues}, issues
    assert ("b", "rate_limit.key") in {(n, f) for _, n, f in issues}, issues


# --- on real workers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect, counting):
    home = tmp_path_factory.mktemp("limits")
    with postgres_database("fm_limits") as database_url:
        # A node waiting longer than the workers' prefetch (10 s) lets go of its run.
        yield home, stack_env(home, pg_prefect, database_url, KEY, FLOWMAESTRO_DELAY_RELEASE_S="10")


@pytest.fixture(scope="module")
def api(stack):
    home, env = stack
    proc, base = start_serve(home, env, workers=0)
    yield base
    proc.stop()


@pytest.fixture(scope="module")
def workers(stack, api):
    """Two worker processes taking one run each at a time: two runs started together run
    in both."""
    home, env = stack
    started = [start_worker(home, env, name=f"lim{i}-{uuid.uuid4().hex[:4]}", limit=1) for i in range(2)]
    yield started
    for worker in started:
        worker.stop()


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30)


def fan_out(name: str, url: str, branches: int, **limits: Any) -> dict[str, Any]:
    """A parallel of ``branches`` http calls to ``url``, each with ``limits``."""
    return canvas(
        [
            node("start", "start"),
            node("each", "parallel", data={"mode": "count", "count": branches}),
            node("call", "http", parentId="each", data={"url": url}, **limits),
            node("end", "end", data={"output": "{{ each.results | length }}"}),
        ],
        [("start", "each"), ("each", "end")],
        name=name,
    )


def calls_to(counting: Any, path: str) -> list[dict[str, Any]]:
    with counting.lock:
        return sorted((dict(r) for r in counting.requests if r["path"] == path), key=lambda r: r["at"])


def assert_never_two_in_flight(calls: list[dict[str, Any]]) -> None:
    for before, after in zip(calls, calls[1:]):
        assert after["at"] >= before["answered"], f"two calls in flight at once at the server: {before} {after}"


async def events_of(run_id: str) -> list[Any]:
    log = RedisEventLog("redis://127.0.0.1:6379/0")
    try:
        return await log.read(run_id)
    finally:
        await log.close()


@pytest.mark.workers
async def test_a_key_with_limit_one_never_has_two_calls_in_flight_in_a_parallel(api, workers, counting, pg_prefect):
    key = f"slow-{uuid.uuid4().hex[:8]}"
    path = f"/one-{key}"
    raw = fan_out(f"limit-one-{key}", f"{counting.url}{path}?delay=1", 4, concurrency={"key": key, "limit": 1})
    async with client(api) as http:
        run_id = await save_and_execute(http, raw)
        result = await final(http, run_id)
    assert result["status"] == "completed", result
    calls = calls_to(counting, path)
    assert len(calls) == 4, calls
    assert all("answered" in call for call in calls), calls
    assert_never_two_in_flight(calls)
    # Three branches waited, each said so once, naming its resolved key.
    waiting = [e for e in await events_of(run_id) if e.type == "node:waiting"]
    assert len(waiting) >= 3, waiting
    assert {(e.data["reason"], e.data["key"], e.data["limit"]) for e in waiting} == {("concurrency", key, 1)}
    assert len({tuple(e.data["path"]) for e in waiting}) == len(waiting)
    # The limit is Prefect's, named after the owner and the key, visible in its UI.
    async with PrefectClient(pg_prefect.api_url) as prefect:
        limit = await prefect.read_global_concurrency_limit_by_name(f"fm:{OWNER}:{key}")
    assert limit.limit == 1 and limit.active_slots == 0


@pytest.mark.workers
async def test_the_limit_holds_across_two_worker_processes(api, workers, counting, pg_prefect):
    key = f"shared-{uuid.uuid4().hex[:8]}"
    path = f"/two-{key}"
    raw = fan_out(f"limit-two-{key}", f"{counting.url}{path}?delay=1", 2, concurrency={"key": key, "limit": 1})
    async with client(api) as http:
        saved = await save(http, raw)
        run_ids = [
            (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()["execution_id"]
            for _ in range(2)
        ]
        results = await asyncio.gather(*(final(http, run_id) for run_id in run_ids))
    assert [r["status"] for r in results] == ["completed", "completed"], results
    async with PrefectClient(pg_prefect.api_url) as prefect:
        pids = {
            (
                await prefect.read_flow_run(uuid.UUID(await prefect_flow_run_id(run_id, pg_prefect.api_url)))
            ).infrastructure_pid
            for run_id in run_ids
        }
    assert len(pids) == 2, f"both runs ran in one worker process: {pids}"
    calls = calls_to(counting, path)
    assert len(calls) == 4, calls
    assert_never_two_in_flight(calls)


@pytest.mark.workers
async def test_a_rate_limit_spreads_the_starts(api, workers, counting):
    key = f"rate-{uuid.uuid4().hex[:8]}"
    path = f"/rate-{key}"
    per_minute = 30  # one start every 2 s: 10 starts take at least 18 s
    raw = fan_out(f"rate-{key}", f"{counting.url}{path}", 10, rate_limit={"key": key, "per_minute": per_minute})
    began = time.time()
    async with client(api) as http:
        run_id = await save_and_execute(http, raw)
        result = await final(http, run_id)
    assert result["status"] == "completed", result
    calls = calls_to(counting, path)
    assert len(calls) == 10, calls
    gaps = [after["at"] - before["at"] for before, after in zip(calls, calls[1:])]
    # Never two starts closer than the limit allows (a little slack for the clocks of two
    # processes reading one server), and not a burst then a wait: each gap near 2 s.
    assert min(gaps) >= 60 / per_minute - 0.25, gaps
    assert calls[-1]["at"] - calls[0]["at"] >= 9 * 60 / per_minute - 1, gaps
    assert calls[-1]["at"] - began < 90, gaps
    waiting = [e for e in await events_of(run_id) if e.type == "node:waiting"]
    assert waiting and {e.data["reason"] for e in waiting} == {"rate_limit"}, waiting


@pytest.mark.workers
async def test_a_key_that_names_no_limit_fails_its_node(api, workers, counting):
    raw = canvas(
        [
            node("start", "start"),
            node("call", "http", data={"url": f"{counting.url}/never"}, concurrency={"key": "a/{{ 1 }}", "limit": 1}),
        ],
        [("start", "call")],
        name=f"bad-key-{uuid.uuid4().hex[:6]}",
    )
    async with client(api) as http:
        run_id = await save_and_execute(http, raw)
        result = await final(http, run_id)
    assert result["status"] == "failed", result
    error = result["nodes"]["call"]["error"]
    assert error["type"] == "ConfigError" and "concurrency.key" in error["message"] and "'/'" in error["message"], error
    assert not calls_to(counting, "/never")


@pytest.mark.workers
async def test_a_node_waiting_long_lets_go_of_its_worker_and_runs_later(api, workers, counting, pg_prefect):
    """The slot is held by someone else (here the test) for 30 s: the run's only node waits,
    the run is released (Suspended, its worker free), scheduled again, and completes once the
    slot is free, its node executed once."""
    key = f"held-{uuid.uuid4().hex[:8]}"
    path = f"/held-{key}"
    raw = canvas(
        [
            node("start", "start"),
            node("call", "http", data={"url": f"{counting.url}{path}"}, concurrency={"key": key, "limit": 1}),
        ],
        [("start", "call")],
        name=f"held-{key}",
    )
    async with client(api) as http, PrefectClient(pg_prefect.api_url) as prefect:
        saved = await save(http, raw)
        await prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=f"fm:{OWNER}:{key}", limit=1))
        # Held through the run's Prefect server (this process's default is another one).
        held = await prefect.increment_concurrency_slots_with_lease(
            names=[f"fm:{OWNER}:{key}"], slots=1, mode="concurrency", lease_duration=120
        )
        try:
            run_id = (await http.post(f"/api/workflows/{saved['id']}/execute", json={"inputs": {}})).json()[
                "execution_id"
            ]

            async def released() -> bool:
                states = await prefect.read_flow_run_states(
                    uuid.UUID(await prefect_flow_run_id(run_id, pg_prefect.api_url))
                )
                return any(s.name == "Suspended" for s in states)

            await eventually(released, timeout=90, what="the waiting run released")
            assert not calls_to(counting, path)
            await asyncio.sleep(3)  # the worker is free meanwhile: nothing of the run runs
        finally:
            await prefect.release_concurrency_slots_with_lease(uuid.UUID(held.json()["lease_id"]))
        result = await final(http, run_id)
    assert result["status"] == "completed", result
    assert len(calls_to(counting, path)) == 1
    waiting = [e for e in await events_of(run_id) if e.type == "node:waiting"]
    assert waiting and waiting[0].data["key"] == key, waiting
