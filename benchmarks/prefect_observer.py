"""What Prefect's flow-run suspension observer costs a process that runs many deployment
flow runs in one event loop, as FlowMaestro's worker does (``deployments/worker.py``).

Prefect 3.9's flow engine, for every flow run of a deployment, enters
``prefect._flow_run_suspension.observe_flow_run_suspension``: a thread with its own event
loop, Prefect client and events websocket, which the engine waits for *synchronously*
(``ready_event.wait()``, blocking the caller's event loop) and joins at the end
(``thread.join(timeout=2)``, blocking again). This script runs the same 5-task flow for
N flow runs of a deployment at once in this process, with the observer and without it
(replaced by a no-op), and prints for each round: wall time, time the loop was blocked
entering and leaving the observer, the largest event-loop lag, and CPU of this process
and of the Prefect server (started on PostgreSQL, as ``benchmarks/api.py`` does).

Usage::

    python -m benchmarks.prefect_observer [--runs 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._measure import CpuMeter
from benchmarks._stack import prefect_on_postgres


async def lag_probe(stop: asyncio.Event, lags: list[float], every: float = 0.01) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(every)
        lags.append(time.perf_counter() - started - every)


async def rounds(server: Any, runs: int, count: int) -> None:
    import prefect.flow_engine as flow_engine
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.flow_engine import run_flow_async

    original = flow_engine.observe_flow_run_suspension
    entering: list[float] = []
    leaving: list[float] = []

    @contextlib.contextmanager
    def timed_observer(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        observer = original(*args, **kwargs)
        observer.__enter__()
        entering.append(time.perf_counter() - started)
        try:
            yield
        finally:
            started = time.perf_counter()
            observer.__exit__(None, None, None)
            leaving.append(time.perf_counter() - started)

    @task
    async def step(value: int) -> int:
        return value + 1

    @flow(name="bench-observer-chain")
    async def chain() -> int:
        value = 0
        for _ in range(5):
            value = await step(value)
        return value

    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name="bench-observer", type="flowmaestro"))
        flow_id = await client.create_flow_from_name("bench-observer-chain")
        deployment = await client.create_deployment(
            flow_id=flow_id, name="bench-observer", work_pool_name="bench-observer", entrypoint="unused.py:chain"
        )
        plan = [("warm-up", True)] + [
            (label, on) for _ in range(count) for label, on in (("with the observer", True), ("without it", False))
        ]
        for label, observer_on in plan:
            flow_engine.observe_flow_run_suspension = (
                timed_observer if observer_on else (lambda *a, **k: contextlib.nullcontext())
            )
            flow_runs = [await client.create_flow_run_from_deployment(deployment) for _ in range(runs)]
            entering.clear()
            leaving.clear()
            stop, lags = asyncio.Event(), []
            probe = asyncio.create_task(lag_probe(stop, lags))
            with CpuMeter(prefect=server.procs) as meter:
                started = time.perf_counter()
                await asyncio.gather(
                    *(run_flow_async(chain, flow_run=r, parameters={}, return_type="state") for r in flow_runs)
                )
                wall = time.perf_counter() - started
                await asyncio.sleep(2)  # the server's recorder catches up inside the CPU window
            stop.set()
            await probe
            blocked = (
                f"loop blocked entering {sum(entering):.2f} s ({sum(entering) / runs * 1000:.0f} ms/run), "
                f"leaving {sum(leaving):.2f} s ({sum(leaving) / runs * 1000:.0f} ms/run), "
                if observer_on
                else ""
            )
            print(
                f"{label}: {runs} runs at once, wall {wall:.2f} s, {blocked}largest loop lag "
                f"{max(lags) * 1000:.0f} ms; CPU per run: this process {meter.used['client'] / runs * 1000:.0f} ms, "
                f"Prefect server {(meter.used['prefect'] or 0) / runs * 1000:.0f} ms; {meter.describe()}",
                flush=True,
            )
    flow_engine.observe_flow_run_suspension = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="flow runs at once per round")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of rounds (with, without)")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="fm-bench-observer-"))
    try:
        with prefect_on_postgres(home) as server:
            os.environ.update(
                PREFECT_API_URL=server.api_url,
                PREFECT_LOGGING_LEVEL="WARNING",
                PREFECT_HOME=str(home / "client"),
                PREFECT_LOCAL_STORAGE_PATH=str(home / "results"),
            )
            asyncio.run(rounds(server, args.runs, args.rounds))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
