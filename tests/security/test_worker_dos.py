"""Issue 30, findings 4 (second half) and 7: one owner must not stall a shared worker.

- a run whose loop keeps the event loop busy (20,000 inline iterations) silenced every
  heartbeat of its worker, so another owner's run was marked Crashed;
- 20 of one owner's runs sleeping on a long delay held every slot of the worker, and another
  owner's run stayed pending.

The fast tests need no server; the others run the API, a worker and Prefect as separate
processes (tests/processes.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments import recovery


# --- heartbeats that do not need an idle event loop ------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """The heartbeat events emitted, with the time each was sent."""
    events: list[tuple[float, str, str]] = []
    monkeypatch.setattr(recovery, "emit_event", lambda event, resource, related=None: events.append(
        (time.monotonic(), event, resource["prefect.resource.id"])))
    return events


async def test_heartbeats_continue_while_the_event_loop_is_blocked(sent):
    beats = recovery.HeartbeatEmitter(pool="p", interval_s=0.05, stall_limit_s=60)
    beating = asyncio.create_task(beats.run())
    await asyncio.sleep(0)  # the thread starts
    beats.hold("alice-run")
    blocked_at = time.monotonic()
    time.sleep(1.0)  # the loop's thread computes (a busy run) and awaits nothing for a second
    blocked_until = time.monotonic()
    during = [at for at, _, run in sent if run == "prefect.flow-run.alice-run" and blocked_at < at < blocked_until]
    beating.cancel()
    await asyncio.gather(beating, return_exceptions=True)
    # Every 0.05 s: about 20 while the loop was blocked; the old loop-bound emitter sent none.
    assert len(during) >= 5, f"{len(during)} heartbeats while the loop was blocked for 1 s"
    assert not beats.stalled


async def test_heartbeats_stop_for_released_runs_and_when_the_loop_never_turns_again(sent):
    beats = recovery.HeartbeatEmitter(pool="p", interval_s=0.05, stall_limit_s=0.5)
    beating = asyncio.create_task(beats.run())
    await asyncio.sleep(0)
    beats.hold("gone")
    beats.hold("wedged")
    beats.release("gone")
    released_at = time.monotonic()
    time.sleep(3.0)  # a loop that does not turn for far longer than the stall limit
    beating.cancel()
    await asyncio.gather(beating, return_exceptions=True)
    assert not [at for at, _, run in sent if run == "prefect.flow-run.gone" and at > released_at]
    wedged = [at for at, _, run in sent if run == "prefect.flow-run.wedged" and at > released_at]
    assert wedged, "no heartbeat at all while the loop was blocked"
    assert beats.stalled
    # Nothing after the stall limit (plus generous slack): a wedged process lets its runs go.
    assert max(wedged) < released_at + 1.5, [round(at - released_at, 2) for at in wedged]


async def test_the_beating_thread_stops_with_the_worker(sent):
    beats = recovery.HeartbeatEmitter(pool="p", interval_s=0.02)
    beating = asyncio.create_task(beats.run())
    await asyncio.sleep(0.1)
    thread = beats._thread
    assert thread is not None and thread.is_alive()
    beating.cancel()
    await asyncio.gather(beating, return_exceptions=True)
    thread.join(timeout=60)
    assert not thread.is_alive()


# --- a cap on loop iterations, and loops that let other runs go on -----------------------------------


@pytest.fixture
def loop_cap(monkeypatch):
    """FLOWMAESTRO_MAX_LOOP_ITERATIONS for the test (handler settings are read once per process)."""
    from node_handlers.settings import reset_handler_settings

    def set_cap(value: int) -> None:
        monkeypatch.setenv("FLOWMAESTRO_MAX_LOOP_ITERATIONS", str(value))
        reset_handler_settings()

    yield set_cap
    monkeypatch.delenv("FLOWMAESTRO_MAX_LOOP_ITERATIONS", raising=False)
    reset_handler_settings()


def big_loop(count, max_iterations=1_000_000):
    from tests.support import canvas, node

    return canvas([node("lp", "loop", data={"mode": "for", "count": count, "max_iterations": max_iterations}),
                   node("step", "transform", parentId="lp", data={"output": "{{ loop.index }}"})])


def test_a_static_loop_over_the_cap_is_refused_when_the_canvas_compiles(loop_cap):
    from builder.compiler import compile_canvas
    from node_handlers.registry import default_registry

    loop_cap(10_000)
    compiled = compile_canvas(big_loop(20_000), default_registry())
    assert not compiled.ok
    [issue] = [i for i in compiled.errors if i.node_id == "lp"]
    assert "20000 iterations" in issue.message and "FLOWMAESTRO_MAX_LOOP_ITERATIONS=10000" in issue.message, issue
    assert compile_canvas(big_loop(10_000), default_registry()).ok


async def test_a_templated_loop_over_the_cap_fails_its_node_naming_the_cap(loop_cap):
    from tests.support import canvas, node
    from tests.test_engine import run

    loop_cap(10_000)
    raw = canvas([node("lp", "loop", data={"mode": "for", "count": "{{ inputs.n }}", "max_iterations": 1_000_000}),
                  node("step", "transform", parentId="lp", data={"output": "{{ loop.index }}"})],
                 inputs={"n": {"type": "integer"}})
    result, _ = await run(raw, {"n": 20_000})
    assert result["status"] == "failed"
    error = result["nodes"]["lp"]["error"]
    assert error["type"] == "MaxIterationsExceeded"
    assert "20000 iterations" in error["message"] and "FLOWMAESTRO_MAX_LOOP_ITERATIONS=10000" in error["message"]
    assert not [t for t in result["trace"] if t["node_id"] == "step"], "no iteration ran"


async def test_a_long_inline_loop_lets_another_run_of_the_process_go_on(loop_cap):
    """Two runs in one process, as on a worker: bob loops over 10,000 inline iterations,
    alice's run ticks meanwhile; the longest gap between alice's ticks stays short."""
    from tests.test_engine import run

    loop_cap(10_000)
    gaps: list[float] = []

    async def alice() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(alice())
    started = time.monotonic()
    result, _ = await run(big_loop(10_000))
    took = time.monotonic() - started
    ticking.cancel()
    await asyncio.gather(ticking, return_exceptions=True)
    assert result["status"] == "completed" and result["nodes"]["lp"]["output"]["iterations"] == 10_000
    print(f"bob's 10,000 iterations: {took:.1f} s; alice ticked {len(gaps)} times, longest gap {max(gaps):.3f} s")
    assert len(gaps) > 10 and max(gaps) < 2.0, f"alice's longest wait {max(gaps):.2f} s while bob looped {took:.1f} s"
