"""Run-time benchmark of the loop and parallel containers on a real Prefect server.

Usage::

    python -m benchmarks.containers [--quick] [--reps 3] [--only parallel,loop,memory] [--tracemalloc]

(a) ``parallel``: a ``parallel`` container (mode count, 200 [50] branches,
    max_concurrency 200, canvas settings.max_concurrency 200) whose body is one ``delay``
    of 0.1 s, which only waits, so runs inline (recorded as a task run); against the same
    as a hand-written async Prefect flow (200 gathered task calls, ``NO_CACHE``, no
    persisted results), plain asyncio, and the FlowMaestro engine with its in-process
    ``DirectRunner`` (no Prefect). Warm-up, then ``--reps`` interleaved runs, median.

(b) ``loop``: a ``loop`` (mode for) of 5,000 [1,000] iterations whose body is one
    ``transform`` node: a control node, run inline and recorded in Prefect as one
    final-state event, sent in batches (the default). Reported: wall time, task runs created in
    Prefect (counted in the API, see below), how long after the run the Prefect server had
    recorded them all, peak memory (RSS sampled every 20 ms, peak minus before; optional
    tracemalloc peak), the server's CPU and RSS; the same loop with the ``DirectRunner``;
    and, for reference, a loop of 500 [100] iterations with control nodes as full task
    runs (``FLOWMAESTRO_INLINE_CONTROL_NODES=false``), i.e. what the loop would cost
    without the inline path.

(c) ``memory``: a loop of 10,000 [2,000] iterations whose body makes a 10 kB output and
    keeps its length, against the same with 1-byte outputs: peak RSS of each.

Counting task runs: ``POST /task_runs/count`` for the flow run (task runs in a final
state) is polled every 0.5 s until it reaches the expected number (or stops at a
timeout); then all task runs are read once with ``read_task_runs`` (flow-run filter,
pages of 200, sorted by expected start time) and counted, which is the number printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
import tracemalloc
import uuid
from collections import Counter
from typing import Any

from benchmarks import _common

SERVER = _common.prepare_prefect()  # before prefect is imported

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402

from builder.compiler import compile_canvas  # noqa: E402
from flows.engine import Execution  # noqa: E402
from node_handlers.registry import build_registry  # noqa: E402

BRANCH_SLEEP = 0.1


# --------------------------------------------------------------------------- canvases


def parallel_canvas(branches: int, seconds: float) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": f"bench-parallel-{branches}",
        "settings": {"max_concurrency": branches},
        "nodes": [
            {
                "id": "par",
                "type": "parallel",
                "data": {"mode": "count", "count": branches, "max_concurrency": branches},
            },
            {"id": "wait", "type": "delay", "parentId": "par", "data": {"seconds": seconds}},
        ],
        "edges": [],
    }


def loop_canvas(iterations: int) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": f"bench-loop-{iterations}",
        "nodes": [
            {
                "id": "repeat",
                "type": "loop",
                "data": {"mode": "for", "count": iterations, "max_iterations": iterations},
            },
            {"id": "step", "type": "transform", "parentId": "repeat", "data": {"output": {"i": "{{ loop.index }}"}}},
        ],
        "edges": [],
    }


# --------------------------------------------------------------------------- baselines


@task(name="wait", cache_policy=NO_CACHE, persist_result=False)
async def wait_task(i: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    return i


@flow(name="bench-hand-parallel", validate_parameters=False)
async def hand_parallel(branches: int, seconds: float) -> int:
    return len(await asyncio.gather(*(wait_task(i, seconds) for i in range(branches))))


async def aio_parallel(branches: int, seconds: float) -> None:
    async def wait(i: int) -> int:
        await asyncio.sleep(seconds)
        return i

    await asyncio.gather(*(wait(i) for i in range(branches)))


# --------------------------------------------------------------------------- runners


async def run_fm(raw: dict[str, Any], inline: bool = True) -> tuple[str, dict[str, Any]]:
    state = await _common.fm_flow(inline)(canvas=raw, inputs={}, return_state=True)
    result = await state.result(raise_on_failure=False)
    if not state.is_completed():
        raise RuntimeError(
            f"{raw['name']} ended {state.name}: {result.get('error') if isinstance(result, dict) else result}"
        )
    return result["id"], result


async def run_direct(raw: dict[str, Any]) -> Any:
    registry = build_registry()
    compiled = compile_canvas(raw, registry)
    assert compiled.ok and compiled.plan is not None, [str(i) for i in compiled.errors]
    record = await Execution(compiled.plan, registry, run_id=f"bench-{uuid.uuid4().hex[:8]}", inputs={}).run()
    if record.status != "completed":
        raise RuntimeError(f"{raw['name']} ended {record.status}: {record.error}")
    return record


# --------------------------------------------------------------------------- (a) parallel


async def bench_parallel(branches: int, reps: int, check: bool) -> None:
    raw = parallel_canvas(branches, BRANCH_SLEEP)

    async def fm() -> str:
        return (await run_fm(raw))[0]

    async def hand() -> str:
        state = await hand_parallel(branches, BRANCH_SLEEP, return_state=True)
        assert state.is_completed(), state
        return str(state.state_details.flow_run_id)

    async def aio() -> None:
        await aio_parallel(branches, BRANCH_SLEEP)

    async def direct() -> None:
        await run_direct(raw)

    variants = [
        ("fm parallel", fm, branches + 1),
        ("hand", hand, branches),
        ("asyncio", aio, None),
        ("direct", direct, None),
    ]
    results = {
        name: _common.Result("parallel", name, branches, BRANCH_SLEEP, expected_task_runs=expected)
        for name, _, expected in variants
    }
    t0 = time.monotonic()
    for _, runner, _expected in variants:
        await _common.measure(runner)
    for rep in range(reps):
        k = rep % len(variants)
        for name, runner, expected in variants[k:] + variants[:k]:
            results[name].samples.append(await _common.measure(runner, check_task_runs=expected if check else None))
    print(
        f"(a) parallel container, mode count, {branches} branches, body = one delay of {BRANCH_SLEEP:g} s "
        f"(inline: it only waits; one recorded task run per branch); "
        f"max_concurrency {branches} on the container and the canvas. "
        f"Warm-up + {reps} interleaved rep(s), median; {time.monotonic() - t0:.1f} s."
    )
    hand_r, aio_r = results["hand"], results["asyncio"]
    header = (
        f"  {'variant':<12} {'wall s':>7} {'ovh ms/branch':>13} {'ovh x hand':>10} {'wall x hand':>11} "
        f"{'wall x aio':>10} {'cli CPU s':>9} {'srv CPU s':>9} {'visible +s':>10} {'runs seen':>9}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name, _, expected in variants:
        r = results[name]
        seen = [s.task_runs_seen for s in r.samples if s.task_runs_seen is not None]
        print(
            f"  {name:<12} {r.wall:>7.3f} {r.overhead_ms:>13.3f} "
            f"{_common.fmt(r.overhead_ms / hand_r.overhead_ms if hand_r.overhead_ms else None, '.2f'):>10} "
            f"{r.wall / hand_r.wall:>11.2f} {r.wall / aio_r.wall:>10.1f} {r.median_of('client_cpu'):>9.3f} "
            f"{_common.fmt(r.median_of('server_cpu'), '.3f'):>9} "
            f"{_common.fmt(r.median_of('visible_after'), '.2f'):>10} "
            f"{(f'{min(seen)}/{expected}' if seen else '-'):>9}"
        )
    ratio = results["fm parallel"].overhead_ms / hand_r.overhead_ms if hand_r.overhead_ms else float("inf")
    print(
        f"  Target: per-branch overhead <= 1.2x the hand-written flow: {ratio:.2f}x "
        f"({'meets' if ratio <= 1.2 else 'MISSES'}). 'runs seen' counts the container's own "
        f"recorded task run too ({branches + 1} = {branches} branches + the parallel node)."
    )


# --------------------------------------------------------------------------- (b) loop


async def task_run_census(flow_run_id: str, expected: int, timeout: float, stall: float = 20.0) -> dict[str, Any]:
    """Poll the count until ``expected`` task runs are final (or it has not grown for
    ``stall`` seconds, or ``timeout``); then read them all."""
    out: dict[str, Any] = {}
    started = time.monotonic()
    async with get_client() as client:
        out["at_return"] = await _common.count_task_runs(client, flow_run_id)
        count, last_change, last = out["at_return"], time.monotonic(), out["at_return"]
        out["progress"] = [(0.0, count)]
        while count < expected and time.monotonic() - started < timeout:
            await asyncio.sleep(0.5)
            count = await _common.count_task_runs(client, flow_run_id)
            if count != last:
                last, last_change = count, time.monotonic()
                out["progress"].append((round(time.monotonic() - started, 1), count))
            elif time.monotonic() - last_change > stall:
                break
        out["final_count"] = count
        out["last_growth_s"] = last_change - started
        out["stalled"] = count < expected and time.monotonic() - last_change > stall
        out["visible_after"] = time.monotonic() - started if count >= expected else None
        out["all_states_count"] = await _common.count_task_runs(client, flow_run_id, terminal_only=False)
        t = time.monotonic()
        runs = await _common.read_all_task_runs(client, flow_run_id)
        out["read_s"] = time.monotonic() - t
        out["read_count"] = len(runs)
        out["states"] = Counter(r.state_type.value if r.state_type else "None" for r in runs)
        out["inline_tagged"] = sum(1 for r in runs if "inline" in (r.tags or []))
        out["distinct_names"] = len({r.name for r in runs})
        t = time.monotonic()
        await _common.count_task_runs(client, flow_run_id)
        out["count_latency_s"] = time.monotonic() - t
    return out


async def bench_loop(iterations: int, full_iterations: int, reps: int, check: bool, trace_malloc: bool) -> None:
    raw = loop_canvas(iterations)
    print(
        f"(b) loop container, mode for, {iterations} iterations, body = one transform (a control node: "
        "run inline, recorded in Prefect as one final-state event each, sent in batches)"
    )
    # Warm-up on a small loop (imports, first-call costs), then let the server drain.
    await run_fm(loop_canvas(50))
    await _common.wait_server_idle()

    gc.collect()
    log_mark = _common.server_log_offset()
    server_rss_before = _common.server_rss_mb()
    server_cpu_before = _common.server_cpu_s()
    cpu_before = time.process_time()
    with _common.PeakRSS() as mem:
        started = time.perf_counter()
        flow_run_id, result = await run_fm(raw)
        wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    server_cpu_run = _common.server_cpu_s()
    trace = result["trace"]
    expected = len(trace) + 0  # body runs + the loop node itself are all in the trace
    census = await task_run_census(flow_run_id, expected, timeout=240.0) if check else {}
    server_cpu_after = _common.server_cpu_s()
    server_rss_after = _common.server_rss_mb()
    drops = _common.server_log_drops(log_mark)
    result_bytes = len(json.dumps(result, default=str))

    per_iter_ms = wall / iterations * 1000
    print("  FlowMaestro on Prefect (inline control nodes, the default), 1 measured run after a 50-iteration warm-up:")
    print(f"    wall time              {wall:8.2f} s   ({per_iter_ms:.3f} ms per iteration); client CPU {cpu:.2f} s")
    print(
        f"    peak RSS delta         {mem.delta:8.1f} MB  (RSS {mem.before:.0f} -> peak {mem.peak:.0f} -> "
        f"{mem.after:.0f} MB after)"
    )
    output = result.get("output")
    loop_results = len(output["repeat"]["results"]) if isinstance(output, dict) and "repeat" in output else "?"
    print(
        f"    run result             status {result['status']}, {loop_results} "
        f"loop results, trace of {len(trace)} node runs, result JSON {result_bytes / 1e6:.2f} MB"
    )
    if server_cpu_before is not None:
        print(
            f"    Prefect server         CPU {server_cpu_run - server_cpu_before:.2f} s during the run, "
            f"{server_cpu_after - server_cpu_run:.2f} s after it while recording; RSS "
            f"{server_rss_before:.0f} -> {server_rss_after:.0f} MB"
        )
    if census:
        visible = census["visible_after"]
        print(
            f"    task runs in Prefect   {census['read_count']} read back with read_task_runs (paginated by 200, "
            f"{census['read_s']:.2f} s to read; states {dict(census['states'])}, "
            f"{census['inline_tagged']} tagged 'inline'); expected {expected} "
            f"(= {iterations} body runs + 1 loop node)"
        )
        if visible is not None:
            caught = f"all {expected} {visible:.1f} s after it"
        else:
            why = (
                f"the count stopped growing {census['last_growth_s']:.0f} s after the run"
                if census["stalled"]
                else "timeout"
            )
            caught = (
                f"NOT all: {census['final_count']} of {expected} final ({expected - census['all_states_count']} "
                f"never created, {census['all_states_count'] - census['final_count']} not final); {why}"
            )
        print(
            f"    recorder caught up     {census['at_return']} of {expected} final when the run returned; {caught}"
            f"; a count query then took {census['count_latency_s'] * 1000:.0f} ms"
        )
        progress = census["progress"]
        step = max(1, len(progress) // 8)
        print("    recorder progress      " + ", ".join(f"+{t:.0f}s: {c}" for t, c in progress[::step] + progress[-1:]))
    else:
        print(f"    task runs              {len(trace)} in the run result trace (API not queried: --no-check)")
    if drops is not None:
        print(
            f"    server log             {drops} 'Subscription queue is full, dropping message' warnings "
            "(Prefect's in-memory broker holds at most 10,000 messages per subscriber and drops the rest)"
        )
    print(f"    flow run               {flow_run_id}")

    if trace_malloc:
        await _common.wait_server_idle()
        gc.collect()
        tracemalloc.start()
        t = time.perf_counter()
        await run_fm(raw)
        slow = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"    tracemalloc peak       {peak / 1e6:8.1f} MB  (a separate run, {slow:.1f} s under tracemalloc)")
        await _common.wait_server_idle(timeout=60)

    # The same loop without Prefect.
    walls, deltas = [], []
    await run_direct(loop_canvas(50))
    for _ in range(max(reps, 1)):
        gc.collect()
        with _common.PeakRSS() as dmem:
            t = time.perf_counter()
            record = await run_direct(raw)
            walls.append(time.perf_counter() - t)
        deltas.append(dmem.delta)
    gc.collect()
    tracemalloc.start()
    await run_direct(raw)
    _, dpeak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dwall = statistics.median(walls)
    print(f"  FlowMaestro engine with the DirectRunner (no Prefect), median of {len(walls)}:")
    print(
        f"    wall time              {dwall:8.2f} s   ({dwall / iterations * 1000:.3f} ms per iteration); "
        f"peak RSS delta {statistics.median(deltas):.1f} MB; tracemalloc peak {dpeak / 1e6:.1f} MB; "
        f"trace of {len(record.trace)} node runs"
    )
    print(
        f"    Prefect's share        {wall - dwall:.2f} s of {wall:.2f} s ({(wall - dwall) / wall * 100:.0f}%): "
        f"{(wall - dwall) / iterations * 1000:.3f} ms per iteration for the flow run, its event log and "
        "recording the body node in Prefect"
    )

    # Reference: the same body as full task runs.
    if full_iterations:
        await _common.wait_server_idle(timeout=60)
        small = loop_canvas(full_iterations)
        c, t = time.process_time(), time.perf_counter()
        fr_id, fr_result = await run_fm(small, inline=False)
        fwall, fcpu = time.perf_counter() - t, time.process_time() - c
        fcensus = await task_run_census(fr_id, len(fr_result["trace"]), timeout=120.0) if check else {}
        await _common.wait_server_idle(timeout=60)
        c, t = time.process_time(), time.perf_counter()
        ir_id, ir_result = await run_fm(small, inline=True)
        iwall, icpu = time.perf_counter() - t, time.process_time() - c
        icensus = await task_run_census(ir_id, len(ir_result["trace"]), timeout=120.0) if check else {}

        def seen(census: dict[str, Any]) -> str:
            if not census:
                return ""
            if census.get("visible_after") is not None:
                return f", all task runs visible {census['visible_after']:.1f} s after"
            return f", only {census['final_count']} task runs visible"

        print(
            f"  Reference, {full_iterations} iterations: control nodes as full task runs {fwall:.2f} s wall "
            f"({fwall / full_iterations * 1000:.2f} ms per iteration), client CPU {fcpu:.2f} s{seen(fcensus)}; "
            f"inline {iwall:.2f} s wall ({iwall / full_iterations * 1000:.2f} ms per iteration), client CPU "
            f"{icpu:.2f} s{seen(icensus)}: inline is {fwall / iwall:.1f}x faster in wall time, "
            f"{fcpu / icpu:.1f}x in client CPU; {iterations} iterations as full task runs would take about "
            f"{fwall / full_iterations * iterations:.0f} s"
        )
    if census:
        complete = census.get("visible_after") is not None
        print(
            f"  VERDICT: the {iterations}-iteration loop "
            + (
                "completes and every iteration is recorded in Prefect"
                if complete
                else f"completes (the run result is complete) but Prefect recorded only "
                f"{census['final_count']} of {expected} task runs: {expected - census['final_count']} lost"
            )
            + f"; {per_iter_ms:.1f} ms per iteration against {dwall / iterations * 1000:.2f} ms without Prefect, "
            f"so recording, not the engine, is the cost"
            + ("" if drops is None else f"; the server dropped {drops} event messages")
            + "."
        )
    print(
        "  How: control and inline-safe nodes run in the flow run and are recorded as task runs by one "
        "final-state event each (a plain dict), sent to Prefect's POST /events in batches of 500 by the "
        "process's TaskRunSender (flows/prefect_compat.py), off the run's critical path; every iteration "
        "still creates one task run in Prefect's database, written by the server's recorder (see the counts "
        "and catch-up time above). Past FLOWMAESTRO_MAX_TASK_RUNS (10,000) body nodes are summarised."
    )


def memory_canvas(iterations: int, size: int) -> dict[str, Any]:
    """A loop whose body makes a ``size``-character string (a new one each iteration) and
    keeps only its length: nothing later can read the big outputs."""
    return {
        "schema_version": 1,
        "name": f"bench-memory-{iterations}-{size}",
        "nodes": [
            {
                "id": "repeat",
                "type": "loop",
                "data": {"mode": "for", "count": iterations, "max_iterations": iterations},
            },
            {
                "id": "big",
                "type": "transform",
                "parentId": "repeat",
                "data": {"output": f"{{{{ ('x' * {size}) ~ loop.index }}}}"},
            },
            {"id": "size", "type": "transform", "parentId": "repeat", "data": {"output": "{{ big | length }}"}},
        ],
        "edges": [{"id": "e", "source": "big", "target": "size"}],
    }


async def bench_memory(iterations: int) -> None:
    """(c) Peak memory of a long loop with large outputs against the same loop with tiny ones:
    what the run holds beyond what later templates can read (the loop's results)."""
    print(
        f"(c) memory: loop of {iterations} iterations, body = a 10 kB output then its length "
        "(FlowMaestro on Prefect, the product path)"
    )
    await run_fm(memory_canvas(20, 10))
    rows = []
    for size in (10_000, 1):
        await _common.wait_server_idle(timeout=60)
        gc.collect()
        with _common.PeakRSS() as mem:
            t = time.perf_counter()
            _, result = await run_fm(memory_canvas(iterations, size))
            wall = time.perf_counter() - t
        assert len(result["nodes"]["repeat"]["output"]["results"]) == iterations
        rows.append((size, wall, mem.delta, mem.peak))
        print(
            f"    outputs of {size:>6} B   wall {wall:6.2f} s; "
            f"peak RSS delta {mem.delta:7.1f} MB (peak {mem.peak:.0f} MB)"
        )
    (_, _, big, _), (_, _, small, _) = rows
    held = iterations * 10_000 / 1e6
    print(
        f"  The 10 kB outputs add {big - small:.1f} MB to the peak, of the {held:.0f} MB they total: no output is "
        "kept once its iteration is over; what grows with them is the events still on their way to the event "
        "log (outputs over FLOWMAESTRO_EVENT_OUTPUT_MAX_BYTES are left out of events)."
    )


async def main_async(args: argparse.Namespace) -> None:
    reps = args.reps or (1 if args.quick else 3)
    wanted = set((args.only or "parallel,loop,memory").split(","))
    started = time.monotonic()
    idle = await _common.server_idle_level()
    print(
        f"Prefect server {SERVER.api_url} (pid {_common._server_pid}, idle at "
        f"{_common.fmt(None if idle is None else idle * 100, '.0f')}% of a core); load average {_common.loadavg()}; "
        f"code flows/ builder/ node_handlers/ {_common.code_fingerprint('flows', 'builder', 'node_handlers')}"
    )
    if "parallel" in wanted:
        await bench_parallel(50 if args.quick else 200, reps, not args.no_check)
        print()
    if "loop" in wanted:
        await bench_loop(
            1000 if args.quick else 5000, 100 if args.quick else 500, reps, not args.no_check, args.tracemalloc
        )
        print()
    if "memory" in wanted:
        await bench_memory(2000 if args.quick else 10_000)
    print(f"\nTotal {time.monotonic() - started:.1f} s; load average now {_common.loadavg()}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 branches, 1,000 iterations, 1 rep")
    parser.add_argument("--reps", type=int, default=0, help="measured runs (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated: parallel,loop,memory")
    parser.add_argument("--no-check", action="store_true", help="do not query task runs in the Prefect API")
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="one more loop run under tracemalloc for the peak of Python allocations",
    )
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
