"""What tracing and run metrics cost per node execution: the engine (``Execution`` with its
in-process ``DirectRunner``, no Prefect) runs one canvas, a loop of N transform iterations
(N + 3 node executions), with

``off``      no ``OTEL_*`` variable: the engine's per-node hook is the shared no-op
             (``flows.observing.NO_OBSERVER``), the default;
``metrics``  a worker serving metrics, no traces (``flows.run_metrics``);
``spans``    the SDK's spans kept in memory, not exported (what creating them costs);
``traces``   tracing on as ``OTEL_EXPORTER_OTLP_ENDPOINT`` turns it on: the SDK's batch
             processor and the OTLP/HTTP exporter, sending to a local receiver (a process of
             its own that decodes every span, tests/otlp_server.py); the timing includes the
             spans' export, flushed before the clock stops;
``both``     traces and metrics.

Usage::

    python -m benchmarks.tracing [--quick] [--nodes 2000] [--reps 5]

Rounds are interleaved (every variant once per round, in a rotating order); the table
gives the median wall time, per node, and the cost per node over ``off``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.engine import Execution
from flows.observing import NO_OBSERVER, Observability, RunFacts
from flows.run_metrics import RunMetrics
from flows.tracing import Tracing
from node_handlers.registry import build_registry
from tests.support import canvas, compiled, node

VARIANTS = ("off", "metrics", "spans", "traces", "both")


def loop_canvas(iterations: int) -> dict:
    return canvas(
        [
            node("start", "start"),
            node("lp", "loop", data={"mode": "for", "count": iterations, "max_iterations": iterations}),
            node("step", parentId="lp", data={"output": "{{ loop.index * 2 }}"}),
            node("end", "end", data={"output": "{{ lp.results | length }}"}),
        ],
        [("start", "lp"), ("lp", "end")],
        name="bench-tracing",
    )


def observability(variant: str, endpoint: str) -> Observability:
    tracing = (
        Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}) if variant in ("traces", "both") else None
    )
    if variant == "spans":
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        tracing = Tracing(provider)
    return Observability(tracing, RunMetrics() if variant in ("metrics", "both") else None)


async def one_run(plan, registry, observed: Observability) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    observer = observed.run(RunFacts("bench", "bench-tracing", None, None, None, None, None))
    execution = Execution(plan, registry, run_id="bench", inputs={}, observer=observer)
    if observer is not NO_OBSERVER:
        execution.bus.subscribe(observer.event)
    record = await execution.run()
    observer.close()
    if observed.tracing is not None:
        observed.tracing.provider.force_flush()  # the spans are sent before the clock stops
    elapsed = time.perf_counter() - started
    assert record.status == "completed", record.error
    return elapsed


def off_hook_ns(calls: int = 200_000) -> float:
    """What ``Execution.execute`` adds to a node when nothing is observed: entering and
    leaving the shared no-op context and setting its result (best of 5)."""
    node, frame, run = object(), object(), object()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(calls):
            with NO_OBSERVER.node(node, frame, run) as seen:  # type: ignore[arg-type]
                seen.result = None
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


async def main(nodes: int, reps: int) -> None:
    registry = build_registry()
    plan = compiled(loop_canvas(nodes), registry)
    executions = nodes + 3
    # The receiver in a process of its own: decoding the spans must not take this one's CPU.
    receiver = subprocess.Popen(
        [sys.executable, "-m", "tests.otlp_server"],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        endpoint = receiver.stdout.readline().strip()
        observers = {variant: observability(variant, endpoint) for variant in VARIANTS}
        for variant in VARIANTS:  # warm-up: imports, first compiles, the exporter's connection
            await one_run(plan, registry, observers[variant])
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for round_ in range(reps):
            order = VARIANTS[round_ % len(VARIANTS) :] + VARIANTS[: round_ % len(VARIANTS)]
            for variant in order:
                times[variant].append(await one_run(plan, registry, observers[variant]))
        for observed in observers.values():
            await observed.close()
        spans = int(httpx.get(f"{endpoint}/count", timeout=30).text)
    finally:
        receiver.communicate(timeout=30)  # its stdin closes: it stops
    hook_ns = off_hook_ns()
    expected_spans = 2 * (reps + 1) * (executions + 1)  # traces and both: a span per node and the run's
    print(f"{nodes} loop iterations: {executions} node executions a run, {reps} runs a variant (median)")
    print(f"spans received by the OTLP receiver: {spans} (expected {expected_spans})")
    print(f"the engine's per-node hook with tracing and metrics off: {hook_ns:.0f} ns a node execution")
    base = statistics.median(times["off"])
    print(f"{'variant':<9} {'wall s':>8} {'us/node':>9} {'+us/node vs off':>16}")
    for variant in VARIANTS:
        wall = statistics.median(times[variant])
        print(f"{variant:<9} {wall:8.3f} {wall / executions * 1e6:9.1f} {(wall - base) / executions * 1e6:16.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2000, help="loop iterations of the run (default 2000)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per variant (default 5)")
    parser.add_argument("--quick", action="store_true", help="200 iterations, 2 runs: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.reps = 200, 2
    asyncio.run(main(args.nodes, args.reps))
