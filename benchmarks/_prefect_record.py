"""What the Prefect server recorded of some flow runs, read over its REST API (httpx, no
Prefect import): when each run changed state, when its first task run started, and
whether it ended. The benchmark reads these after a part, to split a run's time into the
phases Prefect saw: created (Scheduled), picked by a worker (Pending), started by the
flow engine (Running), ended (Completed/Failed/...).

Every timestamp is epoch seconds; Prefect's come from the clients that proposed the
states, which all run on this machine.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx

FINAL_TYPES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
PAGE = 200  # the API's largest page


def epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def client(prefect_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=prefect_url.rstrip("/") + "/", timeout=60)


async def flow_runs(prefect_url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The flow runs (as the API returns them), by id."""
    found: dict[str, dict[str, Any]] = {}
    async with client(prefect_url) as http:
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            answer = await http.post(
                "flow_runs/filter", json={"flow_runs": {"id": {"any_": chunk}}, "limit": len(chunk)}
            )
            answer.raise_for_status()
            found.update({run["id"]: run for run in answer.json()})
    return found


async def tagged_flow_runs(prefect_url: str, tag: str) -> list[dict[str, Any]]:
    """Every flow run with this tag."""
    found: list[dict[str, Any]] = []
    async with client(prefect_url) as http:
        while True:
            answer = await http.post(
                "flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}, "limit": PAGE, "offset": len(found)}
            )
            answer.raise_for_status()
            page = answer.json()
            found += page
            if len(page) < PAGE:
                return found


async def wait_tagged_final(prefect_url: str, tag: str, timeout: float, poll_s: float = 0.5) -> list[dict[str, Any]]:
    """Poll until every flow run with this tag is in a final state (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await tagged_flow_runs(prefect_url, tag)
        if all(run.get("state_type") in FINAL_TYPES for run in runs) or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(poll_s)


async def wait_final(
    prefect_url: str, ids: list[str], timeout: float, poll_s: float = 0.25
) -> dict[str, dict[str, Any]]:
    """Poll until every run is in a final state (or ``timeout``); the runs as last read."""
    deadline = time.monotonic() + timeout
    while True:
        runs = await flow_runs(prefect_url, ids)
        if all((run.get("state_type") in FINAL_TYPES) for run in runs.values()) and len(runs) == len(ids):
            return runs
        if time.monotonic() > deadline:
            return runs
        await asyncio.sleep(poll_s)


def execution_of(run: dict[str, Any]) -> str:
    """The execution a flow run (as the API returns it) runs: its ``execution:<id>`` tag (a
    run the API accepted), else its own id (a run started elsewhere)."""
    tags = [t for t in run.get("tags") or () if t.startswith("execution:")]
    return tags[0].removeprefix("execution:") if tags else str(run["id"])


async def flow_runs_of_executions(prefect_url: str, execution_ids: list[str]) -> dict[str, str]:
    """``{execution id: flow run id}``: a run the API accepted has an execution id of its own,
    which its flow run carries as the tag ``execution:<id>`` (a run started elsewhere is its
    own flow run, and is missing here)."""
    found: dict[str, str] = {}
    async with client(prefect_url) as http:
        for start in range(0, len(execution_ids), PAGE):
            tags = [f"execution:{i}" for i in execution_ids[start : start + PAGE]]
            answer = await http.post("flow_runs/filter", json={"flow_runs": {"tags": {"any_": tags}}, "limit": PAGE})
            answer.raise_for_status()
            for run in answer.json():
                for tag in run.get("tags") or ():
                    if tag.startswith("execution:"):
                        found[tag.removeprefix("execution:")] = run["id"]
    return found


async def state_times(prefect_url: str, ids: list[str], concurrency: int = 8) -> dict[str, dict[str, float]]:
    """For each run, the first time it entered each state type and each state name:
    ``{"SCHEDULED": t, "PENDING": t, "Submitting": t, "RUNNING": t, "COMPLETED": t, ...}``
    (the worker proposes Pending when it takes the run, then Pending named Submitting)."""
    gate = asyncio.Semaphore(concurrency)
    times: dict[str, dict[str, float]] = {}
    async with client(prefect_url) as http:

        async def one(run_id: str) -> None:
            async with gate:
                answer = await http.get("flow_run_states/", params={"flow_run_id": run_id})
            if answer.status_code != 200:
                return
            seen: dict[str, float] = {}
            for state in answer.json():
                t = epoch(state.get("timestamp"))
                for key in (state["type"], state.get("name")):
                    if t is not None and key and (key not in seen or t < seen[key]):
                        seen[key] = t
            times[run_id] = seen

        await asyncio.gather(*(one(i) for i in ids))
    return times


async def first_task_starts(prefect_url: str, ids: list[str], expected: int, timeout: float = 30.0) -> dict[str, float]:
    """For each flow run, when its first task run started; waits (up to ``timeout``) until
    ``expected`` task runs per flow run are recorded (the server records them from events,
    a little later)."""
    deadline = time.monotonic() + timeout
    while True:
        runs: list[dict[str, Any]] = []
        async with client(prefect_url) as http:
            offset = 0
            while True:
                answer = await http.post(
                    "task_runs/filter", json={"flow_runs": {"id": {"any_": ids}}, "limit": PAGE, "offset": offset}
                )
                answer.raise_for_status()
                page = answer.json()
                runs += page
                if len(page) < PAGE:
                    break
                offset += PAGE
        if len(runs) >= expected * len(ids) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    starts: dict[str, float] = {}
    for run in runs:
        t = epoch(run.get("start_time"))
        flow_run_id = run.get("flow_run_id")
        if t is not None and flow_run_id and (flow_run_id not in starts or t < starts[flow_run_id]):
            starts[flow_run_id] = t
    return starts
