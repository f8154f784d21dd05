"""What the worker-DoS and delay-release tests share: one FlowMaestro installation on real
processes (``flowmaestro serve`` with one worker of 20 slots, owners bob and alice, the
session's Prefect on PostgreSQL, a store and a work pool of its own), clients of its owners,
runs that sleep, and the Prefect states of a run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.processes import postgres_database, stack_env, start_serve
from tests.support import canvas, execute, node, prefect_flow_run_id, save


@contextmanager
def owners_stack(
    home: Path, prefect: Any, *, bob: str, alice: str, pool: str, **settings: str
) -> Iterator[tuple[str, str]]:
    """``flowmaestro serve`` (the API and one worker of 20 slots) on the work pool ``pool``,
    with ``settings`` (``FLOWMAESTRO_*``) on top; its base URL and store's database URL."""
    with postgres_database("fm_store") as database_url:
        env = stack_env(
            home,
            prefect,
            database_url,
            bob,
            FLOWMAESTRO_API_KEYS=f"bob:{bob},alice:{alice}",
            FLOWMAESTRO_WORK_POOL=pool,
            FLOWMAESTRO_WORKER_LIMIT="20",
            FLOWMAESTRO_WORKER_GRACE_S="2",
            **settings,
        )
        proc, base = start_serve(home, env, workers=1)
        try:
            yield base, database_url
        finally:
            proc.stop()


def owner_client(base: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)


async def save_and_start(http: httpx.AsyncClient, raw: dict, runs: int = 1, inputs: dict | None = None) -> list[str]:
    """Save ``raw`` and start ``runs`` runs of it at once; their execution ids."""
    workflow_id = (await save(http, raw, deployed=False))["id"]
    return list(await asyncio.gather(*(execute(http, workflow_id, inputs) for _ in range(runs))))


def sleeper(name: str, seconds: float, held: bool = False) -> dict:
    """A run that waits ``seconds`` on a delay; ``held``: one that keeps its worker slot all
    along (a ``timeout_s`` makes the delay a task run of its own, which is never released:
    tests/security/test_delay_release.py shows the release)."""
    wait = node("wait", "delay", data={"seconds": seconds}, **({"timeout_s": seconds + 600} if held else {}))
    return canvas(
        [node("start", "start"), wait, node("end", "end", data={"output": "{{ wait.waited_s }}"})],
        [("start", "wait"), ("wait", "end")],
        name=name,
    )


async def statuses(http: httpx.AsyncClient, run_ids: list[str]) -> list[str]:
    answers = await asyncio.gather(*(http.get(f"/api/executions/{run_id}") for run_id in run_ids))
    return [a.json()["status"] for a in answers]


async def prefect_states(prefect_url: str, run_id: str) -> list:
    """A flow run's states, oldest first."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(prefect_url) as prefect:
        flow_run_id = await prefect_flow_run_id(run_id, prefect_url)  # an execution id, or a flow run's
        return sorted(await prefect.read_flow_run_states(uuid.UUID(flow_run_id)), key=lambda s: s.timestamp)


async def state_types(prefect_url: str, run_id: str) -> list[str]:
    """The types of a flow run's states, oldest first."""
    return [s.type.value for s in await prefect_states(prefect_url, run_id)]


async def wait_for_state(prefect_url: str, run_id: str, check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = await prefect_states(prefect_url, run_id)
        if states and check(states):
            return states
        await asyncio.sleep(0.5)
    raise AssertionError(f"not {what} within {timeout:.0f} s: {[(s.name, s.message) for s in states]}")


async def pool_report(prefect_url: str, pool: str) -> str:
    """The flow runs of ``pool`` that have not ended (queue, state, message, last change),
    and its workers' last heartbeats: what a test that waited in vain prints, to tell a
    full queue from a worker that stopped polling."""
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    live = [t for t in StateType if t not in (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED)]
    async with PrefectClient(prefect_url) as prefect:
        flow_runs = await prefect.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            limit=200,
        )
        queues = {q.id: q for q in await prefect.read_work_queues(work_pool_name=pool)}
        workers = await prefect.read_workers_for_work_pool(pool)
    lines = [
        f"{r.id} {queues[r.work_queue_id].name if r.work_queue_id in queues else r.work_queue_name} "
        f"{r.state.name if r.state else None} since {r.state.timestamp if r.state else None}: "
        f"{(r.state.message or '')[:80] if r.state else ''}"
        for r in flow_runs
    ]
    lines += [f"queue {q.name}: limit {q.concurrency_limit}, paused {q.is_paused}" for q in queues.values()]
    lines += [f"worker {w.name}: last heartbeat {w.last_heartbeat_time}" for w in workers]
    return "\n".join([f"pool {pool} now:", *lines])
