"""Compile-time benchmark: how ``compile_canvas`` scales with canvas size.

Usage::

    python -m benchmarks.compile [--sizes 1000,10000,50000] [--shapes layered,nested] [--warm] [--gc-paused]
    python -m benchmarks.compile --profile 10000:layered

Two shapes of generated canvases, each of about N nodes:

``layered``
    A DAG of layers ~20 nodes wide after a ``start`` node. Most layers are ``transform``
    nodes whose templates read a node of the previous layer (half of them through
    ``nodes["node-id"]``, ids contain hyphens); every fifth layer is made of ``condition``
    nodes whose edges leave on ``condition-hi`` and ``else`` handles, followed two layers
    later by ``merge`` nodes. Every node has two incoming edges from the previous layer.

``chain``
    The attack of issue 30 (finding 3): ``start`` then one long chain of transforms, each
    reading the first one (``{{ n0 }}``), so every reference check asks whether a node
    thousands of edges up leads to it. Quadratic before reference checks used ancestor
    bitsets (16,000 nodes: 55 s in the API; now well under a second).

``nested``
    A chain of blocks: a ``parallel`` (collection) holding a ``loop`` (forEach over
    ``parallel.item``) holding a chain of transforms and an inner ``parallel`` with its own
    chain; a top-level transform after each block reads the block's results.

Per size and shape it prints: compile time (best of 3 runs up to 10k nodes, 1 run above),
time per node in µs, peak memory during one compile (tracemalloc, a separate run since
tracing slows everything down) and the time per node relative to the first (1k) size
(1.0 means linear growth). Timings are wall-clock: run it on a quiet machine. Template-analysis
caches are cleared before every run, so each run is a cold compile of a canvas never seen
before (what the API does); ``--warm`` keeps them. ``compile_canvas`` leaves Python's cyclic
garbage collector running, as the API's threaded compiles must; ``--gc-paused`` pauses it
around each compile, as the CLI does (``compiler.collector_paused``), to show what that saves.

Target stated by the product: linear growth, 10k nodes in under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import pstats
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from builder import compiler
from builder.compiler import compile_canvas
from builder.limits import CompileLimits
from builder.templates import analysis, render, token_reader
from node_handlers.registry import build_registry

WIDTH = 20
UNLIMITED = CompileLimits.unlimited()  # measured past the caps the API enforces (5,000 nodes by default)


# --------------------------------------------------------------------------- generators


def _node_id(layer: int, index: int) -> str:
    return f"n-{layer}-{index}"


def _ref(node_id: str, index: int) -> str:
    """A reference to ``node_id``: through ``nodes[...]`` (hyphenated ids need it)."""
    return f'nodes["{node_id}"]' if index % 2 == 0 else f"nodes['{node_id}']"


def _layer_kind(layer: int) -> str:
    if layer % 5 == 2:
        return "condition"
    if layer % 5 == 4:
        return "merge"
    return "transform"


def layered_canvas(size: int, width: int = WIDTH) -> dict[str, Any]:
    """A layered DAG of about ``size`` nodes (start + layers of ``width`` + end)."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {}}]
    edges: list[dict[str, Any]] = []
    layers = max(1, (size - 2) // width)
    previous: list[str] = []
    for layer in range(layers):
        kind = _layer_kind(layer) if layer else "transform"
        current = []
        for i in range(width):
            node_id = _node_id(layer, i)
            current.append(node_id)
            position = {"x": 200 * layer, "y": 80 * i}
            if not previous:
                data: dict[str, Any] = {"output": {"value": "{{ inputs.seed }}", "i": i}}
                nodes.append({"id": node_id, "type": "transform", "position": position, "data": data})
                edges.append({"id": f"e-start-{i}", "source": "start", "target": node_id})
                continue
            up = previous[i]
            if kind == "condition":
                data = {
                    "mode": "first",
                    "conditions": [
                        {"id": "hi", "expression": f"{_ref(up, i)}.value > {i}"},
                        {"id": "lo", "expression": f"{{{{ {_ref(up, i)}.value < 0 }}}}"},
                    ],
                }
            elif kind == "merge":
                data = {"label": f"merge {layer}/{i}"}
            else:
                data = {
                    "label": f"step {layer}/{i}",
                    "output": {
                        "value": f"{{{{ {_ref(up, i)}.value }}}}",
                        "text": f"layer {layer}: {{{{ {_ref(up, i)} | tojson }}}} / {{{{ inputs.seed + {i} }}}}",
                        "n": layer * width + i,
                    },
                }
            nodes.append({"id": node_id, "type": kind, "position": position, "data": data})
            for k, source in enumerate((previous[i], previous[(i + 1) % width])):
                edge: dict[str, Any] = {
                    "id": f"e-{layer}-{i}-{k}",
                    "source": source,
                    "target": node_id,
                    "type": "smoothstep",
                }
                if _layer_kind(layer - 1) == "condition" and layer - 1:
                    edge["sourceHandle"] = "condition-hi" if k == 0 else "else"
                edges.append(edge)
        previous = current
    nodes.append({"id": "end", "type": "end", "data": {"output": f"{{{{ {_ref(previous[0], 0)} }}}}"}})
    for i, source in enumerate(previous):
        handle = {"sourceHandle": "else"} if _layer_kind(layers - 1) == "condition" and layers > 1 else {}
        edges.append({"id": f"e-end-{i}", "source": source, "target": "end", **handle})
    return {
        "schema_version": 1,
        "name": f"layered-{size}",
        "inputs": {"seed": {"type": "integer", "default": 1}},
        "nodes": nodes,
        "edges": edges,
        "viewport": {"x": 0, "y": 0, "zoom": 1},
    }


BLOCK_CHAIN = 8  # transforms in the loop body and in the inner parallel body


def nested_canvas(size: int) -> dict[str, Any]:
    """Blocks of 20 nodes: parallel > loop > (8 transforms, parallel > 8 transforms), then a reader."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start", "data": {}}]
    edges: list[dict[str, Any]] = []
    previous = "start"
    blocks = max(1, (size - 1) // (4 + 2 * BLOCK_CHAIN))
    for b in range(blocks):
        par, loop, inner = f"par-{b}", f"loop-{b}", f"inner-{b}"
        items = "{{ inputs.items }}" if previous == "start" else f"{{{{ {previous}.value }}}}"
        nodes.append(
            {"id": par, "type": "parallel", "data": {"mode": "collection", "items": items, "max_concurrency": 4}}
        )
        nodes.append(
            {
                "id": loop,
                "type": "loop",
                "parentId": par,
                "data": {"mode": "forEach", "items": "{{ parallel.item }}", "max_iterations": 50},
            }
        )
        chain_prev = None
        for k in range(BLOCK_CHAIN):
            node_id = f"body-{b}-{k}"
            read = f"{{{{ nodes['{chain_prev}'].value }}}}" if chain_prev else "{{ loop.item }}"
            nodes.append(
                {
                    "id": node_id,
                    "type": "transform",
                    "parentId": loop,
                    "data": {"output": {"value": read, "where": "{{ parallel.index }}/{{ loop.index }}"}},
                }
            )
            if chain_prev:
                edges.append({"id": f"e-{node_id}", "source": chain_prev, "target": node_id})
            chain_prev = node_id
        nodes.append({"id": inner, "type": "parallel", "parentId": loop, "data": {"mode": "count", "count": 2}})
        edges.append({"id": f"e-{inner}", "source": chain_prev, "target": inner})
        inner_prev = None
        for k in range(BLOCK_CHAIN):
            node_id = f"deep-{b}-{k}"
            read = f"{{{{ nodes['{inner_prev}'].value }}}}" if inner_prev else f"{{{{ nodes['{chain_prev}'].value }}}}"
            nodes.append(
                {
                    "id": node_id,
                    "type": "transform",
                    "parentId": inner,
                    "data": {"output": {"value": read, "where": "{{ loop.index }}.{{ parallel.index }}"}},
                }
            )
            if inner_prev:
                edges.append({"id": f"e-{node_id}", "source": inner_prev, "target": node_id})
            inner_prev = node_id
        reader = f"after_{b}"
        nodes.append(
            {"id": reader, "type": "transform", "data": {"output": {"value": f"{{{{ nodes['{par}'].results }}}}"}}}
        )
        edges.append({"id": f"e-{par}-in", "source": previous, "target": par})
        edges.append({"id": f"e-{par}-out", "source": par, "target": reader})
        previous = reader
    return {
        "schema_version": 1,
        "name": f"nested-{size}",
        "inputs": {"items": {"type": "array", "default": [[1]]}},
        "nodes": nodes,
        "edges": edges,
    }


def chain_canvas(size: int) -> dict[str, Any]:
    """``start`` -> n0 -> n1 -> ... each transform reading ``n0`` (n0 reads the inputs)."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "start", "data": {}}]
    edges: list[dict[str, Any]] = []
    previous = "start"
    for i in range(max(1, size - 1)):
        node_id = f"n{i}"
        read = "{{ inputs.seed }}" if i == 0 else "{{ n0 }}"
        nodes.append({"id": node_id, "type": "transform", "data": {"output": read}})
        edges.append({"id": f"e{i}", "source": previous, "target": node_id})
        previous = node_id
    return {
        "schema_version": 1,
        "name": f"chain-{size}",
        "inputs": {"seed": {"type": "integer", "default": 1}},
        "nodes": nodes,
        "edges": edges,
    }


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "layered": layered_canvas,
    "nested": nested_canvas,
    "chain": chain_canvas,
}


# --------------------------------------------------------------------------- measuring


def _clear_caches() -> None:
    for cached in (analysis.analyse, token_reader._shape_entry, render._compiled_template, render._compiled_expression):
        cached.cache_clear()


def _compile_once(canvas: dict[str, Any], warm: bool, gc_paused: bool = False) -> float:
    registry = build_registry()
    if not warm:
        _clear_caches()
    gc.collect()
    with compiler.collector_paused() if gc_paused else contextlib.nullcontext():
        started = time.perf_counter()
        result = compile_canvas(canvas, registry, UNLIMITED)
        elapsed = time.perf_counter() - started
    if not result.ok:
        problems = "; ".join(str(issue) for issue in result.errors[:5])
        raise SystemExit(f"generated canvas {canvas['name']} does not compile: {problems}")
    return elapsed


def _peak_memory_mb(canvas: dict[str, Any], warm: bool) -> float:
    registry = build_registry()
    if not warm:
        _clear_caches()
    gc.collect()
    tracemalloc.start()
    try:
        compile_canvas(canvas, registry, UNLIMITED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


def measure(shape: str, size: int, warm: bool, gc_paused: bool = False) -> dict[str, Any]:
    canvas = SHAPES[shape](size)
    nodes = len(canvas["nodes"])
    runs = 3 if size <= 10_000 else 1
    if warm:
        _compile_once(canvas, warm=True)  # fill the caches once
    best = min(_compile_once(canvas, warm, gc_paused) for _ in range(runs))
    return {
        "shape": shape,
        "size": size,
        "nodes": nodes,
        "edges": len(canvas["edges"]),
        "runs": runs,
        "seconds": best,
        "us_per_node": best / nodes * 1e6,
        "peak_mb": _peak_memory_mb(canvas, warm),
    }


def profile(shape: str, size: int, top: int = 15) -> str:
    canvas = SHAPES[shape](size)
    registry = build_registry()
    _clear_caches()
    profiler = cProfile.Profile()
    profiler.enable()
    compile_canvas(canvas, registry, UNLIMITED)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="comma-separated node counts")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--warm", action="store_true", help="keep template caches between runs")
    parser.add_argument(
        "--gc-paused",
        action="store_true",
        help="pause Python's cyclic GC during each compile, as the CLI does (shows what it saves)",
    )
    parser.add_argument("--profile", metavar="SIZE:SHAPE", help="print a cProfile of one compile instead")
    args = parser.parse_args(argv)
    if args.profile:
        size, _, shape = args.profile.partition(":")
        print(profile(shape or "layered", int(size)))
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    build_registry()  # imports and plugin loading are not part of a compile
    print(
        f"compile_canvas, {'warm' if args.warm else 'cold'} template caches"
        f"{', GC paused while compiling' if args.gc_paused else ''}; target: linear, 10k nodes < 1 s"
    )
    ratio_name = f"vs {sizes[0] // 1000}k" if sizes[0] % 1000 == 0 else "vs 1st"
    header = (
        f"{'shape':<8} {'size':>7} {'nodes':>7} {'edges':>7} {'runs':>4} {'time s':>9} "
        f"{'µs/node':>9} {'peak MB':>9} {ratio_name:>7}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for shape in shapes:
        baseline = None
        for size in sizes:
            row = measure(shape, size, args.warm, args.gc_paused)
            baseline = baseline or row["us_per_node"]
            ratio = row["us_per_node"] / baseline
            print(
                f"{shape:<8} {size:>7} {row['nodes']:>7} {row['edges']:>7} {row['runs']:>4} "
                f"{row['seconds']:>9.3f} {row['us_per_node']:>9.1f} {row['peak_mb']:>9.1f} {ratio:>7.2f}",
                flush=True,
            )
            if 9_000 <= size <= 11_000:
                verdicts.append(
                    f"{shape} {size}: {row['seconds']:.3f} s "
                    f"({'meets' if row['seconds'] < 1 else 'MISSES'} the 1 s target)"
                )
    for verdict in verdicts:
        print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
