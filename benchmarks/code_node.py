"""What a code node costs: a trivial one in Python and in JavaScript, against a ``transform``
doing the same, and against the same function called in-process.

Usage::

    python -m benchmarks.code_node [--runs 200] [--warm-pool 2] [--quick]

Each kind runs ``--runs`` times as the body of a sequential loop in the in-process engine
(``flows.engine.Execution``, no Prefect), so every sample is one node execution as a run
makes it: templates resolved, the handler called, its result recorded. Per node, the time
between its ``started_at`` and ``ended_at`` in the run's trace. The plain function is timed
around the call alone. The four kinds run in turns (a run of each, then again), so a load
that comes and goes on the machine weighs on each alike. The sandbox's warm pool
(``FLOWMAESTRO_CODE_WARM_POOL``, 2 by default) is what keeps Python's p50 low: ``--warm-pool
0`` shows the cost of starting a sandbox per execution. Back to back, every execution needs
a sandbox started meanwhile; ``--pause-ms 200`` puts a ``delay`` after each execution, as
when code nodes are not the only thing a run does, so that the spares are ready.

Target stated by issue 23: a Python code node's p50 at most 50 ms on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import datetime
from typing import Any

from benchmarks._measure import pct, table
from builder.compiler import compile_canvas
from flows.engine import Execution
from node_handlers.registry import HandlerRegistry, builtin_handlers
from node_handlers.services import HandlerServices
from node_handlers.settings import HandlerSettings

TARGET_PYTHON_P50_S = 0.050
PYTHON = "def main(inputs):\n    return {'total': inputs['a'] + inputs['b']}"
JAVASCRIPT = "function main(inputs) { return { total: inputs.a + inputs.b } }"
INPUTS = {"a": "{{ loop.index }}", "b": 1}


def plain(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"total": inputs["a"] + inputs["b"]}


def _body(kind: str) -> dict[str, Any]:
    if kind == "transform":
        return {"type": "transform", "data": {"output": {"total": "{{ loop.index + 1 }}"}}}
    language, code = ("python", PYTHON) if kind == "code python" else ("javascript", JAVASCRIPT)
    return {"type": "code", "data": {"language": language, "code": code, "inputs": INPUTS}}


def _canvas(kind: str, count: int, pause_s: float) -> dict[str, Any]:
    body = _body(kind)
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        {"id": "each", "type": "loop", "data": {"mode": "for", "count": count}},
        {"id": "step", "parentId": "each", **body},
    ]
    edges = [{"id": "e0", "source": "start", "target": "each"}]
    if pause_s:  # a delay after each step: the loop's result is then the delay's
        nodes.append({"id": "pause", "parentId": "each", "type": "delay", "data": {"seconds": pause_s}})
        edges.append({"id": "e1", "source": "step", "target": "pause"})
    return {"name": f"bench-{kind.replace(' ', '-')}", "nodes": nodes, "edges": edges}


async def _node_times(
    kind: str, count: int, services: HandlerServices, registry: HandlerRegistry, pause_s: float = 0.0
) -> list[float]:
    compiled = compile_canvas(_canvas(kind, count, pause_s), registry)
    assert not compiled.errors, compiled.errors
    execution = Execution(compiled.plan, registry, run_id=f"bench-{kind}", inputs={}, services=services)
    result = (await execution.run()).result()
    assert result["status"] == "completed", result.get("error")
    if not pause_s:
        outputs = result["nodes"]["each"]["output"]["results"]
        assert outputs == [{"total": index + 1} for index in range(count)], outputs[:3]
    return [
        (datetime.fromisoformat(entry["ended_at"]) - datetime.fromisoformat(entry["started_at"])).total_seconds()
        for entry in result["trace"]
        if entry["node_id"] == "step"
    ]


def _plain_times(count: int) -> list[float]:
    times = []
    for index in range(count):
        started = time.perf_counter()
        plain({"a": index, "b": 1})
        times.append(time.perf_counter() - started)
    return times


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.3f}" if value < 0.001 else f"{value * 1000:.1f}"


async def measure(runs: int, warm_pool: int, turns: int, pause_s: float) -> dict[str, list[float]]:
    services = HandlerServices(HandlerSettings(code_warm_pool=warm_pool))
    registry = HandlerRegistry(builtin_handlers(services.settings))
    problem = await services.code_sandbox.problem()
    if problem is not None:
        raise SystemExit(f"the code sandbox cannot be set up here: {problem}")
    kinds = ["plain function", "transform", "code python", "code javascript"]
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        await _node_times("code python", 2, services, registry)  # the probe, imports, the pool's first spares
        await asyncio.sleep(0.5)
        share = max(1, runs // turns)
        for _ in range(turns):
            for kind in kinds:
                if kind == "plain function":
                    samples[kind] += _plain_times(share)
                else:
                    samples[kind] += await _node_times(kind, share, services, registry, pause_s)
    finally:
        await services.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="node executions per kind")
    parser.add_argument("--warm-pool", type=int, default=2, help="spare Python sandboxes (FLOWMAESTRO_CODE_WARM_POOL)")
    parser.add_argument("--quick", action="store_true", help="10 executions per kind (a smoke run)")
    parser.add_argument(
        "--pause-ms", type=float, default=0.0, help="a delay node after each execution (nodes not back to back)"
    )
    args = parser.parse_args()
    runs = 10 if args.quick else args.runs
    turns = 2 if args.quick else 4
    samples = asyncio.run(measure(runs, args.warm_pool, turns, args.pause_ms / 1000))
    rows = [
        [kind, len(values), _ms(pct(values, 50)), _ms(pct(values, 95)), _ms(max(values))]
        for kind, values in samples.items()
    ]
    title = f"warm pool {args.warm_pool}, pause {args.pause_ms:g} ms, load average {os.getloadavg()[0]:.1f}"
    print(table(["per node", "n", "p50 ms", "p95 ms", "max ms"], rows, title=title))
    python_p50 = pct(samples["code python"], 50) or 0.0
    verdict = "met" if python_p50 <= TARGET_PYTHON_P50_S else "MISSED"
    print(
        f"target: Python code node p50 <= {TARGET_PYTHON_P50_S * 1000:.0f} ms: {verdict} ({python_p50 * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
