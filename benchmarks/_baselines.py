"""The two paths ``benchmarks/api.py`` compares FlowMaestro's with, on the same Prefect server:

- **raw Prefect**: a hand-written flow of five tiny tasks (``raw_prefect_worker.py``) as a
  deployment on a work pool of its own, served by FlowMaestro's worker (the same class,
  the same number of processes and limit, the same 1 s poll), N runs created at once with
  ``create_flow_run_from_deployment``: what Prefect and the worker cost without FlowMaestro;
- **in-process**: the 5-node chain canvas started in the benchmark's own process as the
  API started runs before workers (``flows.launch.start_run``, since removed: the flow run
  is created Pending, then runs as an asyncio task here, ``start_in_process``): what a run
  costs without any worker or API.

Both need Prefect imported in this process, after ``PREFECT_API_URL`` points at the server.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from benchmarks._measure import (
    CpuMeter,
    CpuTimeline,
    PathResult,
    PrefectRequests,
    cpu_fields,
    deltas,
    prefect_probe,
    settle,
)
from benchmarks._prefect_record import FINAL_TYPES, epoch, first_task_starts, state_times, wait_final
from benchmarks._stack import PrefectServer, postgres_backends, start_worker, wait_started, workers_procs

RUN_TIMEOUT_S = 600.0


async def raw_prefect(
    prefect: PrefectServer,
    env: dict[str, str],
    home: Path,
    *,
    count: int,
    workers: int,
    limit: int,
    poll_s: float,
    pool: str,
) -> PathResult:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from benchmarks.raw_prefect_worker import ENTRYPOINT, FLOW_NAME, STEPS
    from deployments.workflow_deployments import WORKER_TYPE

    async with get_client() as client:
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=pool, type=WORKER_TYPE, description="benchmarks/api.py: raw Prefect baseline")
            )
        except ObjectAlreadyExists:
            pass
        flow_id = await client.create_flow_from_name(FLOW_NAME)
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"raw-chain-{pool}", work_pool_name=pool, entrypoint=ENTRYPOINT
        )
        procs = [
            start_worker(
                f"raw-{i}",
                [
                    "-m",
                    "benchmarks.raw_prefect_worker",
                    "--pool",
                    pool,
                    "--limit",
                    str(limit),
                    "--name",
                    f"{pool}-{i}",
                    "--poll-s",
                    str(poll_s),
                ],
                env,
                home,
            )
            for i in range(workers)
        ]
        try:
            await asyncio.gather(*(asyncio.to_thread(wait_started, p) for p in procs))
            # Warm up both workers (first-run imports, clients), as the latency part does for FlowMaestro's.
            warm = [str((await client.create_flow_run_from_deployment(deployment_id)).id) for _ in range(2 * workers)]
            await wait_final(prefect.api_url, warm, RUN_TIMEOUT_S)
            await settle(prefect.procs)
            meter_procs = dict(
                workers=workers_procs(procs),
                prefect=prefect.procs,
                postgres=postgres_backends(prefect.database, env["FLOWMAESTRO_DATABASE_URL"]),
            )
            probe = prefect_probe(prefect.api_url)

            async def create() -> tuple[str | None, float, float]:
                sent = time.time()
                try:
                    run = await client.create_flow_run_from_deployment(deployment_id)
                except Exception:  # counted as an error
                    return None, sent, time.time()
                return str(run.id), sent, time.time()

            with CpuMeter(**meter_procs) as meter, PrefectRequests(prefect.log) as requests:
                async with CpuTimeline(**meter_procs) as timeline, probe:
                    first_sent = time.time()
                    created = await asyncio.gather(*(create() for _ in range(count)))
                    ids = [c[0] for c in created if c[0]]
                    runs = await wait_final(prefect.api_url, ids, RUN_TIMEOUT_S)
        finally:
            await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))
    states = await state_times(prefect.api_url, ids)
    starts = await first_task_starts(prefect.api_url, ids, STEPS)
    completed = [i for i in ids if runs.get(i, {}).get("state_type") == "COMPLETED"]
    ended = [i for i in ids if runs.get(i, {}).get("state_type") in FINAL_TYPES]
    sent = {c[0]: c[1] for c in created if c[0]}
    answered = {c[0]: c[2] for c in created if c[0]}
    done_at = {i: states.get(i, {}).get("COMPLETED") or epoch(runs[i].get("end_time")) for i in completed}
    last_answer = max(c[2] for c in created)
    last_done = max(done_at.values(), default=last_answer)
    st = {i: states.get(i, {}) for i in completed}
    result = PathResult(
        "raw Prefect",
        count,
        len(completed),
        errors=(count - len(ids)) + (len(ended) - len(completed)),
        lost=len(ids) - len(ended),
        wall_s=last_done - first_sent,
        wall_prefect_s=last_done - first_sent,
        accept=[c[2] - c[1] for c in created],
        first_step=deltas([(sent[i], starts.get(i)) for i in completed]),
        done=deltas([(sent[i], done_at[i]) for i in completed]),
        phases=[
            ("create_flow_run_from_deployment call (client)", [c[2] - c[1] for c in created]),
            (
                "created -> picked by a worker (Pending)",
                deltas([(answered[i], st[i].get("PENDING")) for i in completed]),
            ),
            (
                "Pending -> Submitting (worker: job configuration, labels)",
                deltas([(st[i].get("PENDING"), st[i].get("Submitting")) for i in completed]),
            ),
            (
                "Submitting -> Running (worker runs the flow engine, which starts)",
                deltas([(st[i].get("Submitting"), st[i].get("RUNNING")) for i in completed]),
            ),
            ("Running -> 1st task started", deltas([(st[i].get("RUNNING"), starts.get(i)) for i in completed])),
            (
                "1st task started -> Completed (5 tasks, final state)",
                deltas([(starts.get(i), done_at[i]) for i in completed]),
            ),
        ],
        cpu=[
            f"creates (first sent -> last answered) {timeline.describe(first_sent, last_answer)}",
            f"runs (last answered -> last completed) {timeline.describe(last_answer, last_done)}",
            f"whole part: {meter.describe()}",
        ],
        notes=[probe.describe(), requests.describe(count)],
        **cpu_fields(meter, len(completed)),
    )
    return result


async def start_in_process(flow: Any, canvas: dict[str, Any], inputs: dict[str, Any]) -> tuple[str, Any]:
    """What ``flows.launch.start_run`` did: create the flow run (Pending, so its id is known at
    once), then run the flow for it as an asyncio task of this process; (run id, the task)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    from flows.prefect_compat import start_flow_run_in_process

    parameters = {"canvas": canvas, "inputs": inputs, "workflow_id": None, "version": None, "owner": None}
    async with get_client() as client:
        flow_run = await client.create_flow_run(
            flow,
            name=str(canvas.get("name") or "workflow"),
            parameters=parameters,
            tags=["flowmaestro"],
            state=Pending(),
        )
    return str(flow_run.id), start_flow_run_in_process(flow, flow_run, parameters)


async def in_process(prefect: PrefectServer, canvas: dict[str, Any], *, count: int) -> PathResult:
    """``count`` runs of ``canvas`` started at once in this process (``start_in_process``)."""
    from flows.flow import workflow_flow
    from flows.run_context import RunContext

    seen: dict[str, dict[str, float]] = {}

    def listen(bus: Any) -> None:
        times = seen.setdefault(bus.execution_id, {})
        bus.subscribe(lambda event: times.setdefault(event.type, epoch(event.timestamp)))

    context = RunContext.from_environment(listeners=(listen,))
    flow = workflow_flow(context)

    async def one() -> tuple[str | None, float, float, float, bool]:
        sent = time.time()
        try:
            run_id, task = await start_in_process(flow, canvas, {})
        except Exception:
            return None, sent, time.time(), time.time(), False
        answered = time.time()
        try:
            state = await asyncio.wait_for(task, RUN_TIMEOUT_S)
            ok = state.is_completed()
        except Exception:
            ok = False
        return run_id, sent, answered, time.time(), ok

    try:
        await one()  # warm-up: imports, the flow's first run in this process
        await settle(prefect.procs)
        meter_procs = dict(
            prefect=prefect.procs,
            postgres=postgres_backends(prefect.database, os.environ.get("FLOWMAESTRO_DATABASE_URL")),
        )
        probe = prefect_probe(prefect.api_url)
        with CpuMeter(**meter_procs) as meter, PrefectRequests(prefect.log) as requests:
            async with CpuTimeline(**meter_procs, client=os.getpid()) as timeline, probe:
                first_sent = time.time()
                results = await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await context.close()
    ok = [r for r in results if r[4]]
    started = [r for r in results if r[0]]
    ids = [r[0] for r in started]
    states = await state_times(prefect.api_url, ids)
    last_answer = max(r[2] for r in results)
    last_done = max((r[3] for r in ok), default=last_answer)
    ev = {r[0]: seen.get(r[0], {}) for r in ok}
    return PathResult(
        "in-process",
        count,
        len(ok),
        errors=count - len(ok),
        lost=0,
        wall_s=last_done - first_sent,
        client_runs=True,
        wall_prefect_s=max((states.get(r[0], {}).get("COMPLETED", 0.0) for r in ok), default=first_sent) - first_sent,
        accept=[r[2] - r[1] for r in results],
        first_step=deltas([(r[1], ev[r[0]].get("node:started")) for r in ok]),
        done=[r[3] - r[1] for r in ok],
        phases=[
            ("flow run created (start_in_process returned)", [r[2] - r[1] for r in results]),
            (
                "created -> Running (flow engine starts here)",
                deltas([(r[2], states.get(r[0], {}).get("RUNNING")) for r in ok]),
            ),
            (
                "Running -> 1st node:started",
                deltas([(states.get(r[0], {}).get("RUNNING"), ev[r[0]].get("node:started")) for r in ok]),
            ),
            (
                "1st node:started -> execution:completed (the run)",
                deltas([(ev[r[0]].get("node:started"), ev[r[0]].get("execution:completed")) for r in ok]),
            ),
            (
                "execution:completed -> final state returned",
                deltas([(ev[r[0]].get("execution:completed"), r[3]) for r in ok]),
            ),
        ],
        cpu=[
            f"starts (first sent -> last start_in_process returned) {timeline.describe(first_sent, last_answer)}",
            f"runs (-> last completed) {timeline.describe(last_answer, last_done)}",
            f"whole part: {meter.describe()}",
        ],
        notes=[probe.describe(), requests.describe(count)],
        **cpu_fields(meter, len(ok)),
    )
