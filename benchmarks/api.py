"""End-to-end latency and throughput of FlowMaestro's REST API with runs on workers, side by
side with the same work on raw Prefect and in one process, on one Prefect server.

Usage::

    python -m benchmarks.api [--quick] [--redis] [--only latency,concurrent,raw,inprocess]
                             [--runs 50] [--budget-a 60] [--concurrent 100] [--post-limits 0,10]
                             [--workers 2] [--worker-limit 20] [--prefect-url URL] [--keep]
                             [--prefect-api-processes N [--prefect-redis-url URL]]

The script starts a Prefect server of its own on PostgreSQL (its own port and database;
``--prefect-url`` uses a running one instead), a PostgreSQL database for FlowMaestro's store
(and its event log, unless ``--redis``: Redis streams), ``python -m cli serve --workers 0``
(the API alone) and ``--workers`` (2) ``python -m cli worker`` processes on a work pool of
this run, every process with the same ``FLOWMAESTRO_HOME``, database and result storage.

(a) **latency** (FlowMaestro): ``--runs`` (50; 10 with ``--quick``) executions, one after the
    other (stopping early after ``--budget-a`` s, 60; 20 with ``--quick``), of a 3-node workflow
    (start -> transform -> end): ``POST /api/workflows/{id}/execute``, then, right after the 202,
    ``GET /api/executions/{id}/stream`` until ``execution:completed``. Cold (the first run after
    the processes started) and warm: POST -> 202, POST -> first ``node:started`` received,
    POST -> ``execution:completed`` received; and a breakdown of the warm runs with the events'
    own timestamps (set by the engine when it published them) and Prefect's state times (set
    by the clients that proposed them; same machine, same clock): accept, 202 -> picked by a
    worker (Pending: the worker's poll), Pending -> Running, Running -> ``execution:started``
    (the worker loads the canvas and records the start), -> first ``node:started``, the run,
    -> Completed in Prefect (result stored), and delivery (published -> received over SSE).

(b) **throughput** (FlowMaestro): ``--concurrent`` (100; 20 with ``--quick``) executions of a
    5-node chain (start -> t1 -> t2 -> t3 -> end) fired at once, each followed over its own SSE
    stream: runs/s (first POST -> last ``execution:completed`` received), POST -> 202, -> first
    node, -> completed (p50/p95/max), errors (answers other than 202, runs that ended otherwise
    than completed, streams that broke) and lost runs (accepted, never final in the store), with
    the same breakdown. One round per ``--post-limits`` value (0: every POST at once; N: at most
    N POSTs in flight; default 0 alone); the comparison uses the first round.

(c) **raw Prefect** (``_baselines.py``): the same 5-step chain as a hand-written Prefect flow
    (``raw_prefect_worker.py``: five tiny ``@task`` calls in an async ``@flow``), deployed on a
    work pool of its own served by the same worker class (``FlowMaestroWorker``, as many
    processes, same limit and poll), ``--concurrent`` runs created at once with
    ``create_flow_run_from_deployment``: runs/s, create -> first task started, -> completed.

(d) **in-process** (``_baselines.py``): the 5-node chain started in this process as
    ``flows.launch.start_run`` did (flow run created, then run as an asyncio task here),
    ``--concurrent`` at once: runs/s (the path the API took before workers).

Then one table of the three paths with the ratios, and the targets: execute -> first node
started p95 <= 1.5 s warm; N concurrent executes: 0 errors, 0 lost, POST -> 202 p95 <= 300 ms,
>= 10 runs/s and >= 0.8x the raw Prefect path. For a missed target, where the time went.

Each part prints the CPU seconds of the API, the workers, the Prefect server and PostgreSQL
(the backends of the benchmark's two databases) during it, and for the bursts during
the requests and during the runs after them; two probes run meanwhile, one request every
0.25 s: ``GET /docs`` of the API (its answer time is how long its event loop was busy) and
``POST /flow_runs/count`` of Prefect (how responsive it was). Exceptions and Prefect-client
retries the API and workers logged are summarized (``--keep`` keeps their logs).

``events.py`` imports the serve-process helpers of this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

import httpx  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

from benchmarks._measure import (  # noqa: E402
    CpuMeter,
    CpuTimeline,
    LogWatch,
    PathResult,
    PrefectRequests,
    Probe,
    cpu_fields,
    deltas,
    loadavg,
    ms,
    pct,
    prefect_probe,
    settle,
    spread_row,
    table,
)
from benchmarks._prefect_record import (  # noqa: E402
    execution_of,
    flow_runs_of_executions,
    state_times,
    wait_tagged_final,
)
from benchmarks._report import comparison, targets  # noqa: E402
from benchmarks._stack import (  # noqa: E402
    AUTH,
    PrefectServer,
    Served,
    base_env,
    chain_canvas,
    external_prefect,
    postgres_backends,
    postgres_database,
    prefect_on_postgres,
    start_serve,
    start_worker,
    wait_started,
    workers_procs,
)

FINAL = ("execution:completed", "execution:failed", "execution:cancelled")
RUN_TIMEOUT_S = 600.0
"""How long (b) follows a run before calling its stream timed out (runs queue for minutes at 100)."""
DEFAULT_PREFECT = "http://127.0.0.1:4200/api"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _healthy(api_url: str, timeout: float = 5.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def prefect_api_url() -> str:
    """A healthy Prefect server for ``events.py``: ``$PREFECT_API_URL``, else the one on
    :4200, else the embedded server (started if needed) through ``_common.prepare_prefect``."""
    for url in (os.environ.get("PREFECT_API_URL"), DEFAULT_PREFECT):
        if url and _healthy(url):
            return url
    from benchmarks import _common  # no Prefect import in this process until then; none afterwards either

    return _common.prepare_prefect().api_url


def probes(served: Served, prefect_url: str) -> tuple[Probe, Probe]:
    return Probe("API event loop (GET /docs)", "GET", f"{served.base}/docs"), prefect_probe(prefect_url)


def api_client(base: str, timeout: float = 300.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base,
        headers=AUTH,
        timeout=httpx.Timeout(timeout, connect=30),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
    )


async def save_workflow(client: httpx.AsyncClient, canvas: dict[str, Any]) -> str:
    canvas = dict(canvas, name=f"{canvas.get('name', 'bench')}-{uuid.uuid4().hex[:8]}")
    saved = await client.post("/api/workflows", json={"canvas": canvas})
    if saved.status_code != 201:
        raise RuntimeError(f"saving {canvas['name']}: {saved.status_code} {saved.text[:500]}")
    return saved.json()["id"]


def event_time(data: dict[str, Any]) -> float:
    """The ``timestamp`` of an event (set by the engine when it published it), as epoch seconds."""
    return datetime.fromisoformat(data["timestamp"]).timestamp()


# ----------------------------------------------------------------------------- one execution


@dataclass
class Execution:
    posted: float = 0.0  # epoch seconds (comparable with the events' timestamps)
    accepted: float | None = None
    status_code: int | None = None
    execution_id: str | None = None
    exec_started_pub: float | None = None
    first_started_recv: float | None = None
    first_started_pub: float | None = None
    final_recv: float | None = None
    final_pub: float | None = None
    final_type: str | None = None
    events: int = 0
    error: str | None = None
    lags: list[float] = field(default_factory=list)
    states: dict[str, float] = field(default_factory=dict)
    """When Prefect saw the run enter each state type (filled in after a part)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.final_type == "execution:completed"


async def execute_and_follow(
    client: httpx.AsyncClient,
    workflow_id: str,
    *,
    post_timeout: float = 60.0,
    timeout: float = 180.0,
    gate: asyncio.Semaphore | None = None,
    registry: list[str] | None = None,
) -> Execution:
    """POST execute, then follow the SSE stream (opened right after the 202) to the final event.
    ``gate`` bounds the POSTs in flight (not the runs)."""
    if gate is not None:
        await gate.acquire()
    run = Execution(posted=time.time())
    try:
        answer = await client.post(
            f"/api/workflows/{workflow_id}/execute",
            json={"inputs": {}},
            timeout=httpx.Timeout(post_timeout, connect=30),
        )
    except httpx.HTTPError as exc:
        run.error = f"POST {type(exc).__name__}"
        return run
    finally:
        if gate is not None:
            gate.release()
    run.accepted, run.status_code = time.time(), answer.status_code
    if answer.status_code != 202:
        run.error = f"HTTP {answer.status_code}"
        return run
    run.execution_id = answer.json()["execution_id"]
    if registry is not None:
        registry.append(run.execution_id)
    try:
        await asyncio.wait_for(_follow(client, run), timeout)
    except TimeoutError:
        run.error = "stream timeout"
    except (httpx.HTTPError, ValueError) as exc:
        run.error = f"stream {type(exc).__name__}"
    return run


async def _follow(client: httpx.AsyncClient, run: Execution) -> None:
    async with aconnect_sse(client, "GET", f"/api/executions/{run.execution_id}/stream") as source:
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # httpx-sse reports heartbeat comments as empty events
            now = time.time()
            data = json.loads(sse.data)
            run.events += 1
            published = event_time(data)
            run.lags.append(now - published)
            if sse.event == "execution:started" and run.exec_started_pub is None:
                run.exec_started_pub = published
            if sse.event == "node:started" and run.first_started_recv is None:
                run.first_started_recv, run.first_started_pub = now, published
            if sse.event in FINAL:
                run.final_recv, run.final_pub, run.final_type = now, published, sse.event
                return
    raise ValueError("the stream ended without a final event")


async def stored_status(
    client: httpx.AsyncClient, execution_id: str, timeout: float = 30.0, poll_s: float = 1.0
) -> str:
    """The status ``GET /api/executions/{id}`` reports, once final (or whatever it is at the timeout).
    Once a second, as a client would: each read of a run still going costs the API two Prefect
    requests (the run, its pending approvals), which a faster poll would add to what is measured."""
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        try:
            answer = await client.get(f"/api/executions/{execution_id}")
            status = answer.json().get("status", f"HTTP {answer.status_code}")
        except (httpx.HTTPError, ValueError) as exc:
            status = type(exc).__name__
        if status in ("completed", "failed", "cancelled"):
            return status
        await asyncio.sleep(poll_s)
    return status


def phases(runs: list[Execution]) -> list[tuple[str, list[float]]]:
    """Where the time of the runs went, from the events' timestamps (runs whose stream
    reached its final event) and Prefect's state times (every run accepted)."""
    ok = [r for r in runs if r.ok]
    accepted = [r for r in runs if r.execution_id]
    s = lambda r, key: r.states.get(key)  # noqa: E731
    return [
        ("POST -> 202 (accept)", [r.accepted - r.posted for r in runs if r.accepted is not None]),
        ("202 -> picked by a worker (Pending)", deltas([(r.accepted, s(r, "PENDING")) for r in accepted])),
        (
            "Pending -> Submitting (worker: job configuration, labels)",
            deltas([(s(r, "PENDING"), s(r, "Submitting")) for r in accepted]),
        ),
        (
            "Submitting -> Running (worker runs the flow engine, which starts)",
            deltas([(s(r, "Submitting"), s(r, "RUNNING")) for r in accepted]),
        ),
        (
            "Running -> execution:started (load canvas, record start)",
            deltas([(s(r, "RUNNING"), r.exec_started_pub) for r in ok]),
        ),
        ("execution:started -> 1st node:started", deltas([(r.exec_started_pub, r.first_started_pub) for r in ok])),
        ("1st node:started -> execution:completed (the run)", [r.final_pub - r.first_started_pub for r in ok]),
        (
            "execution:completed -> Completed in Prefect (result stored)",
            deltas([(r.final_pub, s(r, "COMPLETED")) for r in ok]),
        ),
        ("execution:completed published -> received (delivery)", [r.final_recv - r.final_pub for r in ok]),
        ("any event published -> received (delivery, all events)", [lag for r in ok for lag in r.lags]),
    ]


# ----------------------------------------------------------------------------- FlowMaestro: API + workers


@dataclass
class FmStack:
    """The API process and its workers, on one Prefect server."""

    served: Served
    workers: list[Any]
    prefect: PrefectServer
    database_url: str

    def procs(self) -> dict[str, Any]:
        return dict(
            api=self.served.pid,
            workers=workers_procs(self.workers),
            prefect=self.prefect.procs,
            postgres=postgres_backends(self.prefect.database, self.database_url),
        )

    def logs(self) -> LogWatch:
        return LogWatch(self.served.log_path, *(w.log for w in self.workers))


async def read_states(prefect_url: str, runs: list[Execution]) -> None:
    ids = [r.execution_id for r in runs if r.execution_id]
    flow_run_of = await flow_runs_of_executions(prefect_url, ids)
    times = await state_times(prefect_url, [flow_run_of.get(i, i) for i in ids])
    for r in runs:
        r.states = times.get(flow_run_of.get(r.execution_id or "", r.execution_id or ""), {})


@dataclass
class Latency:
    cold: list[Execution]
    warm: list[Execution]
    cpu: str = ""

    @property
    def warm_phases(self) -> list[tuple[str, list[float]]]:
        return phases(self.warm)

    def first(self, q: float) -> float | None:
        return pct([r.first_started_recv - r.posted for r in self.warm], q)


async def bench_latency(stack: FmStack, runs: int, budget_s: float) -> tuple[str, Latency]:
    served, prefect_url = stack.served, stack.prefect.api_url
    loop_probe, prefect_pr = probes(served, prefect_url)
    async with api_client(served.base) as client, loop_probe, prefect_pr:
        workflow_id = await save_workflow(client, chain_canvas("bench-latency", 1))
        results: list[Execution] = []
        with CpuMeter(**stack.procs()) as meter, stack.logs() as watch, PrefectRequests(stack.prefect.log) as requests:
            deadline = time.monotonic() + budget_s
            for _ in range(runs):
                results.append(await execute_and_follow(client, workflow_id, registry=served.run_ids))
                if time.monotonic() > deadline:
                    break
    await read_states(prefect_url, results)
    errors = Counter(r.error or r.final_type for r in results if not r.ok)

    def row(label: str, group: list[Execution]) -> list[Any]:
        accept = [r.accepted - r.posted for r in group]
        first = [r.first_started_recv - r.posted for r in group]
        done = [r.final_recv - r.posted for r in group]
        return [
            label,
            len(group),
            ms(pct(accept, 50)),
            ms(pct(accept, 95)),
            ms(pct(first, 50)),
            ms(pct(first, 95)),
            ms(pct(done, 50)),
            ms(pct(done, 95)),
            ms(max(done) if done else None),
        ]

    result = Latency(cold=[r for r in results[:1] if r.ok], warm=[r for r in results[1:] if r.ok], cpu=meter.describe())
    note = "" if len(results) == runs else f"; stopped after {len(results)} runs: --budget-a {budget_s:.0f} s"
    lines = [
        table(
            ["run", "n", "202 p50", "202 p95", "1st node p50", "1st node p95", "done p50", "done p95", "done max"],
            [row("cold (1st after start)", result.cold), row("warm", result.warm)],
            title=f"(a) FlowMaestro: latency of a 3-node run (start -> transform -> end), ms from POST "
            f"execute [{served.name}, {runs} runs one after the other{note}]",
        )
    ]
    for label, group in (("cold run", result.cold), ("warm runs", result.warm)):
        if group:
            rows = [spread_row(name, values) for name, values in phases(group)]
            lines.append(table([f"{label}: breakdown, ms", "n", "p50", "p95", "max"], rows))
    if errors:
        lines.append(f"failed: {dict(errors)} (not in the table)")
    lines += [f"logs: {line}" for line in watch.summary()]
    lines.append(f"during (a): {meter.describe()}")
    lines += [
        f"during (a): {loop_probe.describe()}",
        f"during (a): {prefect_pr.describe()}",
        f"during (a): {requests.describe(len(results))}",
    ]
    return "\n".join(lines), result


async def bench_concurrent(stack: FmStack, count: int, post_limit: int) -> tuple[str, PathResult]:
    served, prefect_url = stack.served, stack.prefect.api_url
    gate = asyncio.Semaphore(post_limit) if post_limit else None
    loop_probe, prefect_pr = probes(served, prefect_url)
    async with api_client(served.base) as client:
        workflow_id = await save_workflow(client, chain_canvas("bench-concurrent", 3))
        warm_up: list[Execution] = []
        if not served.run_ids:  # nothing warmed the workers up yet (--only concurrent)
            warm_up = await asyncio.gather(
                *(
                    execute_and_follow(client, workflow_id, registry=served.run_ids)
                    for _ in range(2 * len(stack.workers))
                )
            )
        await settle(stack.prefect.procs)
        tag = f"workflow:{workflow_id}"
        with CpuMeter(**stack.procs()) as meter, stack.logs() as watch, PrefectRequests(stack.prefect.log) as requests:
            async with loop_probe, prefect_pr, CpuTimeline(**stack.procs()) as timeline:
                first_post = time.time()
                results = await asyncio.gather(
                    *(
                        execute_and_follow(
                            client, workflow_id, timeout=RUN_TIMEOUT_S, gate=gate, registry=served.run_ids
                        )
                        for _ in range(count)
                    )
                )
                # Until every run is over, those whose stream broke and those Prefect created although
                # the API answered otherwise than 202 included: the CPU then covers all the work done.
                ids = [r.execution_id for r in results if r.execution_id]
                finals = await asyncio.gather(*(stored_status(client, i, RUN_TIMEOUT_S) for i in ids))
                statuses = dict(zip(ids, finals))
                in_prefect = await wait_tagged_final(prefect_url, tag, RUN_TIMEOUT_S)
    await read_states(prefect_url, results)
    # Completed for its client: its final event arrived; or, when its stream broke, its stored status.
    done_at = {
        r.execution_id: r.final_recv if r.ok else r.states.get("COMPLETED")
        for r in results
        if r.execution_id and statuses.get(r.execution_id) == "completed"
    }
    done_runs = [r for r in results if done_at.get(r.execution_id or "")]
    ok = [r for r in results if r.ok]
    non_202 = Counter(r.error for r in results if r.status_code != 202)
    failed_runs = Counter(r.final_type for r in results if r.final_type not in (None, "execution:completed"))
    stream_errors = Counter(r.error for r in results if r.status_code == 202 and r.error)
    stored = Counter(statuses.values())
    lost = sum(n for status, n in stored.items() if status not in ("completed", "failed", "cancelled"))
    warmed = {r.execution_id for r in warm_up}
    ghosts = [run for run in in_prefect if execution_of(run) not in statuses and execution_of(run) not in warmed]
    completed_in_prefect = sum(run.get("state_type") == "COMPLETED" for run in in_prefect)
    last_202 = max((r.accepted for r in results if r.accepted is not None), default=first_post)
    last_done = max(done_at.values(), default=first_post)
    result = PathResult(
        "FlowMaestro",
        count,
        len(done_runs),
        errors=sum(non_202.values()) + sum(failed_runs.values()) + sum(stream_errors.values()),
        lost=lost,
        wall_s=last_done - first_post,
        wall_prefect_s=max((r.states.get("COMPLETED", 0.0) for r in done_runs), default=first_post) - first_post,
        accept=[r.accepted - r.posted for r in results if r.accepted is not None],
        first_step=[r.first_started_recv - r.posted for r in ok],
        done=[done_at[r.execution_id] - r.posted for r in done_runs],
        phases=phases(results),
        cpu=[
            f"POSTs (first POST -> last 202) {timeline.describe(first_post, last_202)}",
            f"runs (last 202 -> last completed) {timeline.describe(last_202, last_done)}",
            f"whole part: {meter.describe()}",
        ],
        notes=[loop_probe.describe(), prefect_pr.describe(), requests.describe(len(in_prefect))],
        **cpu_fields(meter, completed_in_prefect),
    )
    label = f"{count}, all POSTs at once" if not post_limit else f"{count}, <= {post_limit} POSTs in flight"
    rows = [
        [
            label,
            len(done_runs),
            f"{result.wall_s:.1f}",
            f"{result.runs_per_s:.2f}",
            ms(pct(result.done, 50)),
            ms(pct(result.done, 95)),
            ms(max(result.done) if result.done else None),
            ms(pct(result.accept, 50)),
            ms(pct(result.accept, 95)),
            sum(non_202.values()),
            sum(failed_runs.values()),
            sum(stream_errors.values()),
            lost,
            len(ghosts),
        ]
    ]
    lines = [
        table(
            [
                "executions",
                "completed",
                "wall s",
                "runs/s",
                "done p50",
                "done p95",
                "done max",
                "202 p50",
                "202 p95",
                "non-202",
                "failed",
                "stream err",
                "lost",
                "ghost",
            ],
            rows,
            title=f"(b) FlowMaestro: concurrent executions of a 5-node chain (start -> t1 -> t2 -> t3 -> "
            f"end), ms from each POST [{served.name}]",
        ),
        result.phase_table("breakdown, ms (event and Prefect state timestamps)"),
    ]
    for what, errors in (
        ("non-202", non_202),
        ("failed runs", failed_runs),
        ("stream errors", stream_errors),
        ("stored status", stored),
    ):
        if errors and (what != "stored status" or set(errors) != {"completed"}):
            lines.append(f"{what}: {dict(errors)}")
    if ghosts:
        lines.append(
            f"ghost runs: Prefect has {len(in_prefect)} flow runs of this workflow for {len(statuses)} "
            f"accepted executions (and {len(warmed)} warming up): {len(ghosts)} exist although the API did "
            f"not answer 202 (it gave up waiting on Prefect), "
            f"{sum(g.get('state_type') == 'COMPLETED' for g in ghosts)} of them executed to completion by the workers"
        )
    lines.append(
        "completed: the final event arrived over SSE, or (stream broken) the stored status is completed; "
        "CPU per run below divides by every run of the workflow completed in Prefect, ghosts included"
    )
    lines += [f"logs: {line}" for line in watch.summary()]
    lines += [f"CPU during (b): {line}" for line in result.cpu] + [f"during (b): {line}" for line in result.notes]
    return "\n".join(lines), result


# ----------------------------------------------------------------------------- main


async def delete_streams(served: Served) -> None:
    """Delete the Redis streams of the runs this benchmark started (they would stay 7 days)."""
    if not served.redis_url or not served.run_ids:
        return
    try:
        import redis.asyncio as redis

        client = redis.Redis.from_url(served.redis_url)
        for start in range(0, len(served.run_ids), 500):
            await client.delete(*(f"flowmaestro:events:{i}" for i in served.run_ids[start : start + 500]))
        await client.aclose()
    except Exception as exc:  # cleanup only
        print(f"(could not delete the benchmark's Redis streams: {exc})", file=sys.stderr)


def code_fingerprint() -> str:
    import hashlib

    digest = hashlib.sha256()
    for folder in ("api", "flows", "builder", "node_handlers", "deployments"):
        for path in sorted((ROOT / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def point_this_process_at(env: dict[str, str]) -> None:
    """This process runs Prefect clients (raw runs) and flows (in-process) of its own: the
    same server, home, database, event log and result storage as the others; quiet logs."""
    for name in (
        "PREFECT_API_URL",
        "PREFECT_HOME",
        "PREFECT_LOCAL_STORAGE_PATH",
        "FLOWMAESTRO_HOME",
        "FLOWMAESTRO_DATABASE_URL",
        "FLOWMAESTRO_WORK_POOL",
    ):
        os.environ[name] = env[name]
    os.environ.pop("FLOWMAESTRO_REDIS_URL", None)
    if "FLOWMAESTRO_REDIS_URL" in env:
        os.environ["FLOWMAESTRO_REDIS_URL"] = env["FLOWMAESTRO_REDIS_URL"]
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


async def run_flowmaestro(
    args: argparse.Namespace,
    prefect: PrefectServer,
    env: dict[str, str],
    home: Path,
    database_url: str,
    redis_url: str | None,
    only: set[str],
    sizes: dict[str, Any],
) -> tuple[Latency | None, PathResult | None]:
    t = time.perf_counter()
    served = await asyncio.to_thread(
        start_serve,
        "API --workers 0",
        prefect.api_url,
        redis_url=redis_url,
        home=home,
        database_url=database_url,
        workers=0,
        extra_env=env,
    )
    pool = env["FLOWMAESTRO_WORK_POOL"]
    workers = [
        start_worker(
            f"fm-{i}",
            ["-m", "cli", "worker", "--pool", pool, "--limit", str(args.worker_limit), "--name", f"{pool}-{i}"],
            env,
            home,
        )
        for i in range(args.workers)
    ]
    latency, concurrent = None, None
    try:
        await asyncio.gather(*(asyncio.to_thread(wait_started, w) for w in workers))
        print(
            f"API pid {served.pid} and {len(workers)} workers (pids {', '.join(str(w.pid) for w in workers)}, "
            f"limit {args.worker_limit} each) up after {time.perf_counter() - t:.1f} s\n",
            flush=True,
        )
        stack = FmStack(served, workers, prefect, database_url)
        if "latency" in only:
            text, latency = await bench_latency(stack, sizes["runs"], sizes["budget"])
            print(text + "\n", flush=True)
        if "concurrent" in only:
            for limit in sizes["limits"]:
                await settle(prefect.procs)
                text, result = await bench_concurrent(stack, sizes["count"], limit)
                concurrent = concurrent or result
                print(text + "\n", flush=True)
    except Exception:
        print(f"--- API log tail ---\n{served.log_tail()}", file=sys.stderr)
        for w in workers:
            print(f"--- worker log tail {w.args} ---\n{w.output()}", file=sys.stderr)
        raise
    finally:
        await asyncio.gather(asyncio.to_thread(served.stop), *(asyncio.to_thread(w.stop) for w in workers))
        await delete_streams(served)
    return latency, concurrent


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    only = set(args.only.split(",")) if args.only else {"latency", "concurrent", "raw", "inprocess"}
    redis_url = (args.redis_url or DEFAULT_REDIS) if args.redis else None
    sizes = {
        "runs": args.runs or (10 if args.quick else 50),
        "budget": args.budget_a or (20 if args.quick else 60),
        "count": args.concurrent or (20 if args.quick else 100),
        "limits": [int(x) for x in (args.post_limits or "0").split(",")],
    }
    home = Path(tempfile.mkdtemp(prefix="fm-bench-api-"))
    tag = uuid.uuid4().hex[:6]
    with ExitStack() as cleanup:
        t = time.perf_counter()
        prefect = (
            external_prefect(args.prefect_url)
            if args.prefect_url
            else cleanup.enter_context(
                prefect_on_postgres(
                    home / "prefect-server", api_processes=args.prefect_api_processes, redis_url=args.prefect_redis_url
                )
            )
        )
        database_url = cleanup.enter_context(postgres_database("fm_bench_store"))
        env = base_env(
            prefect.api_url,
            home,
            database_url=database_url,
            redis_url=redis_url,
            extra_env={"FLOWMAESTRO_WORK_POOL": f"bench-fm-{tag}", "PREFECT_HOME": str(home / "prefect")},
        )
        point_this_process_at(env)
        print(
            f"FlowMaestro API benchmark: Prefect {prefect.api_url} "
            f"({'given' if args.prefect_url else 'on PostgreSQL, started'} in {time.perf_counter() - t:.1f} s, "
            f"{server_layout(args)}), "
            f"store on PostgreSQL, event log {'Redis ' + redis_url if redis_url else 'SQL (PostgreSQL)'}, "
            f"{args.workers} workers x limit {args.worker_limit}, code {code_fingerprint()}, {os.cpu_count()} "
            f"CPUs, load average {loadavg()}",
            flush=True,
        )
        latency = fm = raw = local = None
        if only & {"latency", "concurrent"}:
            latency, fm = await run_flowmaestro(args, prefect, env, home, database_url, redis_url, only, sizes)
        if "raw" in only:
            from benchmarks._baselines import raw_prefect

            await settle(prefect.procs)
            raw = await raw_prefect(
                prefect,
                env,
                home,
                count=sizes["count"],
                workers=args.workers,
                limit=args.worker_limit,
                poll_s=float(os.environ.get("FLOWMAESTRO_WORKER_POLL_S", "1")),
                pool=f"bench-raw-{tag}",
            )
            print(
                raw.report(
                    "(c)", f"(c) raw Prefect: {sizes['count']} runs of a 5-task flow created at once, breakdown, ms"
                )
                + "\n",
                flush=True,
            )
        if "inprocess" in only:
            from benchmarks._baselines import in_process

            await settle(prefect.procs)
            local = await in_process(prefect, chain_canvas("bench-in-process", 3), count=sizes["count"])
            title = (
                f"(d) in-process: {sizes['count']} runs of the 5-node chain started at once in this "
                f"process (flow run created, then run here), breakdown, ms"
            )
            print(local.report("(d)", title) + "\n", flush=True)
        print(
            comparison([p for p in (fm, raw, local) if p], sizes["count"], args.workers, args.worker_limit) + "\n",
            flush=True,
        )
        print(targets(latency, fm, raw) + "\n", flush=True)
    if args.keep:
        print(f"logs kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s; load average {loadavg()}", flush=True)
    return 0


def server_layout(args: argparse.Namespace) -> str:
    if args.prefect_url:
        return "as it is"
    if not args.prefect_api_processes:
        return "one process, services inside"
    return f"{args.prefect_api_processes} API processes, services apart, messaging in Redis"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 sequential runs (20 s at most), 20 concurrent")
    parser.add_argument("--only", default="", help="latency,concurrent,raw,inprocess (default all)")
    parser.add_argument("--runs", type=int, default=0, help="sequential runs for (a) (default 50)")
    parser.add_argument("--budget-a", type=float, default=0, help="stop (a) after this many seconds (default 60)")
    parser.add_argument("--concurrent", type=int, default=0, help="concurrent runs for (b), (c), (d) (default 100)")
    parser.add_argument(
        "--post-limits",
        default="",
        help="rounds of (b): POSTs in flight at once, 0 = all (default 0; e.g. 0,10 adds a round with at most 10)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes for (a), (b) and (c) (default 2)")
    parser.add_argument("--worker-limit", type=int, default=20, help="runs at once per worker (default 20)")
    parser.add_argument(
        "--prefect-url", default=None, help="use this Prefect server instead of starting one on PostgreSQL"
    )
    parser.add_argument(
        "--prefect-api-processes",
        type=int,
        default=0,
        help="0: Prefect's server in one process (default); N: N API processes, its services in one of their own, "
        "messaging in Redis (--prefect-redis-url)",
    )
    parser.add_argument(
        "--prefect-redis-url",
        default="redis://127.0.0.1:6379/7",
        help="Redis database for Prefect's messaging with --prefect-api-processes (emptied before and after)",
    )
    parser.add_argument("--redis", action="store_true", help="event log in Redis (FLOWMAESTRO_REDIS_URL)")
    parser.add_argument("--redis-url", default=None, help=f"Redis URL for --redis (default {DEFAULT_REDIS})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (the processes' logs)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
