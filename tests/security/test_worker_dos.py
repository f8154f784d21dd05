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
