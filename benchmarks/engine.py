"""Run-time benchmark of the engine: FlowMaestro on Prefect vs a hand-written Prefect flow
vs plain asyncio vs the FlowMaestro engine without Prefect, side by side in one process.

Usage::

    python -m benchmarks.engine [--quick] [--reps 3] [--only chain,fanout,layered] [--no-check]
    python -m benchmarks.engine --profile layered:fm-delay0     # cProfile of one run instead

Scenarios (sizes with ``--quick`` in brackets):

``base``     one trivial node: the fixed cost of a run, used for the "marginal" column.
``chain``    a chain of 40 [20] no-op nodes.
``fanout``   100 [50] parallel ``delay`` nodes of 0.1 s, then a ``merge``.
``layered``  a 500-node [200] layered DAG, 25 [10] layers x 20; each node depends on the
             node below it in the previous layer and, for even indexes, on its neighbour too.
``http``     50 [20] parallel ``http`` GETs of a local server answering after 50 ms, then a
             ``merge``: real task runs doing real work.

Variants:

``fm inline``   the canvas through ``flows.flow.run_workflow`` (the product path); no-op
                nodes are ``transform`` (control) nodes, run inline and recorded in Prefect
                as one final-state event each, sent in batches (the default).
``fm tasks``    the same canvas with ``FLOWMAESTRO_INLINE_CONTROL_NODES=false``: every
                control node is a full Prefect task run.
``fm delay0``   no-op nodes are ``delay`` nodes of 0 s: inline-safe (they only wait), so run
                inline too, but each also reports Running when it starts.
``hand``        the same graph as a hand-written async ``@flow`` awaiting async ``@task``
                calls (``cache_policy=NO_CACHE, persist_result=False``); fan-out with
                ``asyncio.gather``, the layered DAG with one asyncio task per node awaiting
                its dependencies (per-node futures).
``asyncio``     the same graph in plain asyncio: the physical limit.
``direct ...``  ``compile_canvas`` + ``Execution(plan, registry, ...)`` with the default
                in-process ``DirectRunner``: the FlowMaestro engine without Prefect.

Every variant runs once as a warm-up, then ``--reps`` times; the rounds are interleaved
(each round runs every variant, in a rotating order) so that background load and the
Prefect server's recorder backlog fall on all variants alike. After every Prefect run,
outside the timing, the script waits until all the run's task runs are final in the API (a
completeness check, reported as "visible +s"; at most 30 s), then until the server's CPU is
near idle again (at most 3 s). The layered scenario warms up on 5 layers instead of 25.

Columns: wall time (median), per-node overhead = (wall - critical-path sleep) / nodes and
its ratio to the hand-written Prefect flow's, wall time relative to asyncio; "marg" = the
per-node overhead after subtracting the wall time of a one-node run of the same family
(the fixed cost of a run), and its ratio to the hand-written flow's; client CPU (this
process, all threads), its marginal per-node value and ratio; the Prefect server's CPU
during the run (median of the reps; the server runs on this machine).

Product targets: per-node overhead no worse than 1.2x the hand-written Prefect flow;
control nodes far cheaper than a full task run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import _common

SERVER = _common.prepare_prefect()  # before prefect is imported
os.environ.setdefault("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")  # the http scenario's local server

import httpx  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

import flows.flow as product_flow  # noqa: E402
from builder.compiler import compile_canvas  # noqa: E402
from flows.engine import Execution  # noqa: E402
from node_handlers.registry import build_registry  # noqa: E402

WIDTH = 20
WARM_LAYERS = 5  # the layered scenario warms up on 5 layers x 20 (same shape, a quarter of the time)
MAX_CONCURRENCY = 100
FANOUT_SLEEP = 0.1
HTTP_DELAY = 0.05
TARGET_RATIO = 1.2


# --------------------------------------------------------------------------- graphs


def layered_deps(layer: int, i: int, width: int) -> list[tuple[int, int]]:
    if layer == 0:
        return []
    deps = [(layer - 1, i)]
    if i % 2 == 0 and width > 1:
        deps.append((layer - 1, (i + 1) % width))
    return deps


def _noop_node(node_id: str, kind: str) -> dict[str, Any]:
    if kind == "transform":
        return {"id": node_id, "type": "transform", "data": {"output": node_id}}
    if kind == "delay0":
        return {"id": node_id, "type": "delay", "data": {"seconds": 0}}
    raise ValueError(kind)


def _canvas(name: str, nodes: list[dict[str, Any]], edges: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": name,
        "nodes": nodes,
        "edges": [{"id": f"e{k}", "source": s, "target": t} for k, (s, t) in enumerate(edges)],
        "settings": {"max_concurrency": MAX_CONCURRENCY},
    }


def chain_canvas(n: int, kind: str) -> dict[str, Any]:
    nodes = [_noop_node(f"n{i}", kind) for i in range(n)]
    return _canvas(f"bench-chain-{n}-{kind}", nodes, [(f"n{i}", f"n{i + 1}") for i in range(n - 1)])


def fanout_canvas(width: int, seconds: float) -> dict[str, Any]:
    nodes = [{"id": f"d{i}", "type": "delay", "data": {"seconds": seconds}} for i in range(width)]
    nodes.append({"id": "merge", "type": "merge", "data": {}})
    return _canvas(f"bench-fanout-{width}", nodes, [(f"d{i}", "merge") for i in range(width)])


def http_canvas(width: int, base_url: str) -> dict[str, Any]:
    nodes = [
        {"id": f"h{i}", "type": "http", "data": {"url": f"{base_url}/h{i}?delay={HTTP_DELAY}"}} for i in range(width)
    ]
    nodes.append({"id": "merge", "type": "merge", "data": {}})
    return _canvas(f"bench-http-{width}", nodes, [(f"h{i}", "merge") for i in range(width)])


def layered_canvas(layers: int, width: int, kind: str) -> dict[str, Any]:
    nodes, edges = [], []
    for layer in range(layers):
        for i in range(width):
            nodes.append(_noop_node(f"n{layer}_{i}", kind))
            edges += [(f"n{dl}_{di}", f"n{layer}_{i}") for dl, di in layered_deps(layer, i, width)]
    return _canvas(f"bench-layered-{layers}x{width}-{kind}", nodes, edges)


# --------------------------------------------------------------------------- hand-written Prefect


@task(name="noop", cache_policy=NO_CACHE, persist_result=False)
async def noop_task(i: Any, seconds: float = 0.0, deps: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return i


@task(name="merge", cache_policy=NO_CACHE, persist_result=False)
async def merge_task(values: list[Any]) -> int:
    return len(values)


@flow(name="bench-hand-chain", validate_parameters=False)
async def hand_chain(n: int) -> Any:
    value = None
    for i in range(n):
        value = await noop_task(i, 0.0, value)
    return value


@flow(name="bench-hand-fanout", validate_parameters=False)
async def hand_fanout(width: int, seconds: float) -> int:
    values = await asyncio.gather(*(noop_task(i, seconds) for i in range(width)))
    return await merge_task(list(values))


@task(name="get", cache_policy=NO_CACHE, persist_result=False)
async def get_task(client: Any, url: str) -> int:
    return (await client.get(url)).status_code


@flow(name="bench-hand-http", validate_parameters=False)
async def hand_http(width: int, base_url: str) -> int:
    async with httpx.AsyncClient() as client:
        codes = await asyncio.gather(*(get_task(client, f"{base_url}/h{i}?delay={HTTP_DELAY}") for i in range(width)))
    return await merge_task(list(codes))


async def aio_http(width: int, base_url: str) -> None:
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(client.get(f"{base_url}/h{i}?delay={HTTP_DELAY}") for i in range(width)))


@flow(name="bench-hand-layered", validate_parameters=False)
async def hand_layered(layers: int, width: int) -> int:
    futures: dict[tuple[int, int], asyncio.Task[Any]] = {}

    async def one(layer: int, i: int, deps: list[asyncio.Task[Any]]) -> Any:
        values = [await d for d in deps]
        return await noop_task(layer * width + i, 0.0, values)

    for layer in range(layers):
        for i in range(width):
            deps = [futures[d] for d in layered_deps(layer, i, width)]
            futures[(layer, i)] = asyncio.create_task(one(layer, i, deps))
    await asyncio.gather(*futures.values())
    return len(futures)


# --------------------------------------------------------------------------- plain asyncio


async def aio_noop(i: Any, seconds: float = 0.0, deps: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return i


async def aio_chain(n: int) -> None:
    value = None
    for i in range(n):
        value = await aio_noop(i, 0.0, value)


async def aio_fanout(width: int, seconds: float) -> None:
    values = await asyncio.gather(*(aio_noop(i, seconds) for i in range(width)))
    len(values)


async def aio_layered(layers: int, width: int) -> None:
    futures: dict[tuple[int, int], asyncio.Task[Any]] = {}

    async def one(layer: int, i: int, deps: list[asyncio.Task[Any]]) -> Any:
        values = [await d for d in deps]
        return await aio_noop(layer * width + i, 0.0, values)

    for layer in range(layers):
        for i in range(width):
            deps = [futures[d] for d in layered_deps(layer, i, width)]
            futures[(layer, i)] = asyncio.create_task(one(layer, i, deps))
    await asyncio.gather(*futures.values())


# --------------------------------------------------------------------------- runners


# Where a FlowMaestro run spends its time: a run listener stamps the moment the flow body
# starts and the engine's first and final events; a wrapper (same behaviour) times the
# summary artifact that run_workflow creates before it returns.
_marks: dict[str, float] = {}


def _on_run(bus: Any) -> None:
    _marks["body"] = time.perf_counter()

    def stamp(event: Any) -> None:
        if event.type == "execution:started":
            _marks["exec_start"] = time.perf_counter()
        elif event.type in ("execution:completed", "execution:failed", "execution:cancelled"):
            _marks["exec_end"] = time.perf_counter()

    bus.subscribe(stamp)


_summary_artifact = product_flow._summary_artifact


async def _timed_summary_artifact(*args: Any) -> None:
    started = time.perf_counter()
    try:
        await _summary_artifact(*args)
    finally:
        _marks["artifact_s"] = time.perf_counter() - started


product_flow._summary_artifact = _timed_summary_artifact
PHASES: list[dict[str, float]] = []
"""Phases of the FlowMaestro runs, in order (read by run_scenario after each run)."""


def fm_runner(raw: dict[str, Any], inline: bool) -> _common.Runner:
    async def run() -> str:
        workflow = _common.fm_flow(inline, listeners=(_on_run,))
        _marks.clear()
        called = time.perf_counter()
        state = await workflow(canvas=raw, inputs={}, return_state=True)
        returned = time.perf_counter()
        result = await state.result(raise_on_failure=False)
        if not state.is_completed():
            raise RuntimeError(
                f"{raw['name']} ended {state.name}: {result.get('error') if isinstance(result, dict) else result}"
            )
        if {"body", "exec_start", "exec_end"} <= set(_marks):
            PHASES.append(
                {
                    "flow_start": _marks["body"] - called,
                    "setup": _marks["exec_start"] - _marks["body"],
                    "engine": _marks["exec_end"] - _marks["exec_start"],
                    "finish": returned - _marks["exec_end"],
                    "artifact": _marks.get("artifact_s", 0.0),
                }
            )
        return result["id"]

    return run


def hand_runner(flow_fn: Any, *args: Any) -> _common.Runner:
    async def run() -> str:
        state = await flow_fn(*args, return_state=True)
        if not state.is_completed():
            raise RuntimeError(f"{flow_fn.name} ended {state.name}")
        return str(state.state_details.flow_run_id)

    return run


def aio_runner(fn: Callable[..., Any], *args: Any) -> _common.Runner:
    async def run() -> None:
        await fn(*args)
        return None

    return run


def direct_runner(raw: dict[str, Any]) -> _common.Runner:
    registry = build_registry()

    async def run() -> None:
        compiled = compile_canvas(raw, registry)
        assert compiled.ok and compiled.plan is not None, [str(i) for i in compiled.errors]
        record = await Execution(compiled.plan, registry, run_id=f"bench-{uuid.uuid4().hex[:8]}", inputs={}).run()
        if record.status != "completed":
            raise RuntimeError(f"{raw['name']} ended {record.status}: {record.error}")
        return None

    return run


@dataclass
class Variant:
    name: str
    family: str  # fm | hand | asyncio | direct: which base run gives its fixed cost
    runner: _common.Runner
    task_runs: int | None = None  # task runs expected in the API (Prefect variants)
    warmup: _common.Runner | None = None  # a smaller graph of the same shape, for the big scenario


@dataclass
class Scenario:
    name: str
    label: str
    nodes: int
    critical_s: float
    variants: list[Variant]


def scenarios(quick: bool, http_url: str = "") -> list[Scenario]:
    chain_n = 20 if quick else 40
    http_w = 20 if quick else 50
    fan_w = 50 if quick else 100
    layers = 10 if quick else 25
    lay_n = layers * WIDTH
    base_t = chain_canvas(1, "transform")
    out = [
        Scenario(
            "base",
            "one trivial node (fixed cost of a run)",
            1,
            0.0,
            [
                Variant("fm inline", "fm", fm_runner(base_t, True), 1),
                Variant("fm delay0", "fm", fm_runner(chain_canvas(1, "delay0"), True), 1),
                Variant("hand", "hand", hand_runner(hand_chain, 1), 1),
                Variant("asyncio", "asyncio", aio_runner(aio_chain, 1)),
                Variant("direct", "direct", direct_runner(base_t)),
            ],
        ),
        Scenario(
            "chain",
            f"chain of {chain_n} no-op nodes",
            chain_n,
            0.0,
            [
                Variant("fm inline", "fm", fm_runner(chain_canvas(chain_n, "transform"), True), chain_n),
                Variant("fm tasks", "fm", fm_runner(chain_canvas(chain_n, "transform"), False), chain_n),
                Variant("fm delay0", "fm", fm_runner(chain_canvas(chain_n, "delay0"), True), chain_n),
                Variant("hand", "hand", hand_runner(hand_chain, chain_n), chain_n),
                Variant("asyncio", "asyncio", aio_runner(aio_chain, chain_n)),
                Variant("direct transform", "direct", direct_runner(chain_canvas(chain_n, "transform"))),
                Variant("direct delay0", "direct", direct_runner(chain_canvas(chain_n, "delay0"))),
            ],
        ),
        Scenario(
            "fanout",
            f"{fan_w}-wide fan-out of {FANOUT_SLEEP:g} s delays, then a merge",
            fan_w + 1,
            FANOUT_SLEEP,
            [
                Variant("fm inline", "fm", fm_runner(fanout_canvas(fan_w, FANOUT_SLEEP), True), fan_w + 1),
                Variant("hand", "hand", hand_runner(hand_fanout, fan_w, FANOUT_SLEEP), fan_w + 1),
                Variant("asyncio", "asyncio", aio_runner(aio_fanout, fan_w, FANOUT_SLEEP)),
                Variant("direct", "direct", direct_runner(fanout_canvas(fan_w, FANOUT_SLEEP))),
            ],
        ),
        Scenario(
            "layered",
            f"{lay_n}-node layered DAG ({layers} layers x {WIDTH})",
            lay_n,
            0.0,
            [
                Variant(
                    "fm inline",
                    "fm",
                    fm_runner(layered_canvas(layers, WIDTH, "transform"), True),
                    lay_n,
                    fm_runner(layered_canvas(WARM_LAYERS, WIDTH, "transform"), True),
                ),
                Variant(
                    "fm tasks",
                    "fm",
                    fm_runner(layered_canvas(layers, WIDTH, "transform"), False),
                    lay_n,
                    fm_runner(layered_canvas(WARM_LAYERS, WIDTH, "transform"), False),
                ),
                Variant(
                    "fm delay0",
                    "fm",
                    fm_runner(layered_canvas(layers, WIDTH, "delay0"), True),
                    lay_n,
                    fm_runner(layered_canvas(WARM_LAYERS, WIDTH, "delay0"), True),
                ),
                Variant(
                    "hand",
                    "hand",
                    hand_runner(hand_layered, layers, WIDTH),
                    lay_n,
                    hand_runner(hand_layered, WARM_LAYERS, WIDTH),
                ),
                Variant("asyncio", "asyncio", aio_runner(aio_layered, layers, WIDTH)),
                Variant("direct transform", "direct", direct_runner(layered_canvas(layers, WIDTH, "transform"))),
                Variant("direct delay0", "direct", direct_runner(layered_canvas(layers, WIDTH, "delay0"))),
            ],
        ),
        Scenario(
            "http",
            f"{http_w}-wide fan-out of http GETs answered after {HTTP_DELAY * 1000:g} ms, then a merge",
            http_w + 1,
            HTTP_DELAY,
            [
                Variant("fm inline", "fm", fm_runner(http_canvas(http_w, http_url), True), http_w + 1),
                Variant("hand", "hand", hand_runner(hand_http, http_w, http_url), http_w + 1),
                Variant("asyncio", "asyncio", aio_runner(aio_http, http_w, http_url)),
                Variant("direct", "direct", direct_runner(http_canvas(http_w, http_url))),
            ],
        ),
    ]
    return out


# --------------------------------------------------------------------------- running and reporting


async def run_scenario(sc: Scenario, reps: int, check: bool) -> dict[str, _common.Result]:
    results = {
        v.name: _common.Result(sc.name, v.name, sc.nodes, sc.critical_s, expected_task_runs=v.task_runs)
        for v in sc.variants
    }
    for v in sc.variants:  # warm-up
        await _common.measure(v.warmup or v.runner, check_task_runs=None, settle=True, idle_timeout=10.0)
    for rep in range(reps):
        k = rep % len(sc.variants)
        for v in sc.variants[k:] + sc.variants[:k]:
            PHASES.clear()
            sample = await _common.measure(
                v.runner, check_task_runs=v.task_runs if check else None, idle_timeout=3.0 if check else 10.0
            )
            if PHASES:
                sample.extra.update(PHASES[-1])
            results[v.name].samples.append(sample)
    return results


def print_table(all_results: list[tuple[Scenario, dict[str, _common.Result]]]) -> None:
    base = dict(all_results[0][1]) if all_results and all_results[0][0].name == "base" else {}
    base_of = {"fm": "fm inline", "hand": "hand", "asyncio": "asyncio", "direct": "direct"} if base else {}
    header = (
        f"{'scenario':<8} {'variant':<17} {'nodes':>5} {'wall s':>7} {'ovh ms/n':>8} {'ovh x hand':>10} "
        f"{'wall x aio':>10} {'marg ms/n':>9} {'marg x hand':>11} {'cpu s':>6} {'marg cpu ms/n':>13} "
        f"{'cpu x hand':>10} {'srv cpu s':>9} {'visible +s':>10} {'runs seen':>9}"
    )
    print(header)
    print("-" * len(header))
    for sc, results in all_results:
        hand, aio = results.get("hand"), results.get("asyncio")
        families = {v.name: v.family for v in sc.variants}

        def marginal(r: _common.Result, family: str, sc=sc) -> tuple[float | None, float | None]:
            if sc.name == "base" or family not in base_of:
                return None, None
            b = base[base_of[family]]
            wall = max(0.0, r.wall - b.wall - sc.critical_s) / sc.nodes * 1000
            cpu = max(0.0, r.median_of("client_cpu") - b.median_of("client_cpu")) / sc.nodes * 1000
            return wall, cpu

        hand_marg = marginal(hand, "hand") if hand else (None, None)
        for v in sc.variants:
            r = results[v.name]
            marg, marg_cpu = marginal(r, families[v.name])
            ovh_x = r.overhead_ms / hand.overhead_ms if hand and hand.overhead_ms else None
            marg_x = marg / hand_marg[0] if marg is not None and hand_marg[0] else None
            cpu_x = marg_cpu / hand_marg[1] if marg_cpu is not None and hand_marg[1] else None
            seen = [s.task_runs_seen for s in r.samples if s.task_runs_seen is not None]
            seen_txt = f"{min(seen)}/{r.expected_task_runs}" if seen else "-"
            timeouts = sum(1 for s in r.samples if s.task_runs_seen is not None and s.visible_after is None)
            visible = _common.fmt(r.median_of("visible_after"), ".2f") + ("!" if timeouts else "")
            print(
                f"{sc.name:<8} {v.name:<17} {sc.nodes:>5} {r.wall:>7.3f} {r.overhead_ms:>8.3f} "
                f"{_common.fmt(ovh_x, '.2f'):>10} {_common.fmt(r.wall / aio.wall if aio else None, '.1f'):>10} "
                f"{_common.fmt(marg, '.3f'):>9} {_common.fmt(marg_x, '.2f'):>11} "
                f"{r.median_of('client_cpu'):>6.3f} {_common.fmt(marg_cpu, '.3f'):>13} {_common.fmt(cpu_x, '.2f'):>10} "
                f"{_common.fmt(r.median_of('server_cpu'), '.3f'):>9} {visible:>10} {seen_txt:>9}"
            )
        print()


def print_phases(all_results: list[tuple[Scenario, dict[str, _common.Result]]]) -> None:
    print(
        "Where a FlowMaestro run's wall time goes (median s): flow start = run_workflow called -> flow body "
        "(Prefect creates the flow run; the canvas is its parameter); setup = compile, inputs, event log -> "
        "engine started; engine = first to final engine event (all nodes); finish = final event -> "
        "run_workflow returned, of which 'artifact' is the summary artifact."
    )
    header = (
        f"  {'scenario':<8} {'variant':<10} {'wall':>7} {'flow start':>10} {'setup':>7} {'engine':>7} "
        f"{'finish':>7} {'artifact':>8}"
    )
    print(header)
    for sc, results in all_results:
        for name, r in results.items():
            rows = [s.extra for s in r.samples if s.extra]
            if not rows:
                continue
            med = {k: _common.median([row[k] for row in rows]) for k in rows[0]}
            print(
                f"  {sc.name:<8} {name:<10} {r.wall:>7.3f} {med['flow_start']:>10.3f} {med['setup']:>7.3f} "
                f"{med['engine']:>7.3f} {med['finish']:>7.3f} {med['artifact']:>8.3f}"
            )
    print()


def print_verdicts(all_results: list[tuple[Scenario, dict[str, _common.Result]]]) -> None:
    print(
        f"Targets: FlowMaestro per-node overhead <= {TARGET_RATIO}x the hand-written Prefect flow; "
        "control nodes far cheaper than a full task run."
    )
    for sc, results in all_results:
        if sc.name == "base" or "hand" not in results:
            continue
        hand = results["hand"]
        for name in ("fm inline", "fm tasks", "fm delay0"):
            if name not in results:
                continue
            ratio = results[name].overhead_ms / hand.overhead_ms if hand.overhead_ms else float("inf")
            verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
            cpu = results[name].median_of("client_cpu") / hand.median_of("client_cpu")
            print(
                f"  {sc.name:<8} {name:<10} {results[name].overhead_ms:7.3f} ms/node vs hand "
                f"{hand.overhead_ms:7.3f} ms/node = {ratio:5.2f}x  ({verdict} the {TARGET_RATIO}x target; "
                f"client CPU {cpu:.2f}x the hand-written flow's)"
            )
        if "fm inline" in results and "fm tasks" in results and sc.name != "fanout":
            inline, full = results["fm inline"].overhead_ms, results["fm tasks"].overhead_ms
            print(
                f"  {sc.name:<8} control nodes inline {inline:.3f} ms/node vs as full task runs {full:.3f} "
                f"ms/node: {full / inline if inline else float('inf'):.1f}x cheaper inline"
            )


async def profile(spec: str, quick: bool, top: int) -> None:
    name, _, variant = spec.partition(":")
    variant = variant.replace("-", " ")
    from tests.processes import CountingServer

    with CountingServer() as http_server:
        await _profile(next(s for s in scenarios(quick, http_server.url) if s.name == name), variant, top)


async def _profile(sc: Scenario, variant: str, top: int) -> None:
    v = next(v for v in sc.variants if v.name == variant)
    await _common.measure(v.runner)  # warm-up
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    await v.runner()
    profiler.disable()
    wall = time.perf_counter() - started
    print(f"cProfile of {sc.name} / {v.name}: {wall:.3f} s wall under the profiler")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(top)
        print(out.getvalue())


async def main_async(args: argparse.Namespace) -> None:
    if args.profile:
        await profile(args.profile, args.quick, args.top)
        return
    reps = args.reps or (1 if args.quick else 3)
    wanted = {"base"} | set((args.only or "chain,fanout,layered,http").split(","))
    started = time.monotonic()
    idle = await _common.server_idle_level()
    print(
        f"Prefect server {SERVER.api_url} (pid {_common._server_pid}, idle at "
        f"{_common.fmt(None if idle is None else idle * 100, '.0f')}% of a core); load average {_common.loadavg()}; "
        f"warm-up + {reps} interleaved rep(s), median; max_concurrency={MAX_CONCURRENCY} on the canvases; "
        f"code flows/ builder/ node_handlers/ {_common.code_fingerprint('flows', 'builder', 'node_handlers')}"
    )
    all_results = []
    from tests.processes import CountingServer

    with CountingServer() as http_server:
        for sc in scenarios(args.quick, http_server.url):
            if sc.name not in wanted:
                continue
            t0 = time.monotonic()
            results = await run_scenario(sc, reps, not args.no_check)
            print(f"  {sc.name}: {sc.label} ... {time.monotonic() - t0:.1f} s", flush=True)
            all_results.append((sc, results))
    print()
    print_table(all_results)
    print_phases(all_results)
    print_verdicts(all_results)
    print(
        f"\nTotal {time.monotonic() - started:.1f} s; load average now {_common.loadavg()}. "
        "'visible +s': seconds after the run returned until all its task runs were final in the "
        "Prefect API ('!' = not all within 30 s); 'runs seen': the fewest seen / expected.\n"
        "'marg' = after subtracting the one-node run of the same family (fixed per-run cost); 'cpu' = CPU "
        "time of this process (main thread and Prefect's worker threads), steadier than wall time on a "
        "shared machine; 'srv cpu' = the Prefect server process's CPU during the run."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller graphs, 1 rep")
    parser.add_argument("--reps", type=int, default=0, help="measured runs per variant (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated scenarios: chain,fanout,layered,http")
    parser.add_argument("--no-check", action="store_true", help="do not wait for task runs to be visible")
    parser.add_argument("--profile", metavar="SCENARIO:VARIANT", help="cProfile one run, e.g. layered:fm-delay0")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
