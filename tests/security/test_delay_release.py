"""Issue 30, finding 7 (second half): 20 of bob's runs sleeping on a long ``delay`` held every
slot of the worker. A delay that still has longer than ``FLOWMAESTRO_DELAY_RELEASE_S`` to
wait now lets go of its worker slot: the run is suspended, scheduled again for the delay's
end, and replayed there from its journal (flows/releases.py).

On real processes: ``flowmaestro serve`` with one worker of 20 slots, Prefect on
PostgreSQL, owners NOT limited (FLOWMAESTRO_OWNER_MAX_RUNS empty), so only the release
keeps bob's runs from taking every slot.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from deployments import recovery
from deployments.worker import BeatingSignals
from flows import prefect_compat
from flows.approvals import WAKE_EARLY_S
from tests.security.owners import owner_client, owners_stack, prefect_states, save_and_start, sleeper

BOB, ALICE = "bob-key-delay-release", "alice-key-delay-release"
CRASH_DETECT_S = 15
RELEASE_S = 2
"""The test's FLOWMAESTRO_DELAY_RELEASE_S: delays longer than the workers' prefetch (10 s) are released."""


async def test_a_run_letting_go_of_its_worker_gets_no_heartbeat_after_it_said_so(sent):
    """The release stops the run's heartbeats before it suspends the run: a beat after the
    suspension would start the lost-worker watch again and the run would be marked Crashed
    (seen: 1 of 20 released runs). Not as a held run, nor as a child (the run is still among
    the process's watched runs while its flow unwinds); holding it again beats again."""
    signals = BeatingSignals(pool="p", crash_detect_s=0.06)  # as a worker wires them: a beat every 0.02 s
    beats = signals.heartbeats
    beating = asyncio.create_task(beats.run())
    await asyncio.sleep(0)
    beats.hold("delayed")
    signals.watch("delayed")
    await asyncio.sleep(0.2)
    signals.holding("delayed", False)
    let_go_at = time.monotonic()
    await asyncio.sleep(0.5)
    assert not [at for at, _, run in sent if run == "prefect.flow-run.delayed" and at >= let_go_at]
    signals.holding("delayed", True)  # not suspended after all
    await asyncio.sleep(0.2)
    beating.cancel()
    await asyncio.gather(beating, return_exceptions=True)
    assert [event for at, event, run in sent if run == "prefect.flow-run.delayed" and at >= let_go_at] and all(
        event == recovery.HEARTBEAT for _, event, _ in sent
    )


class Released(BaseException):
    """Stands for Prefect's Pause in the engine tests below."""


async def run_with_release(raw: dict) -> list:
    from flows.engine import Execution
    from tests.support import compiled, make_registry

    calls = []

    async def release(node_id, path, until):
        calls.append((node_id, path, until))
        raise Released()

    registry = make_registry()
    execution = Execution(compiled(raw, registry), registry, run_id="run-1", inputs={}, release=release)
    try:
        await execution.run()
    except Released:
        pass
    return calls


async def test_a_delay_asks_to_release_the_run_until_its_end_only_when_nothing_else_runs():
    from tests.support import canvas, node

    before = datetime.now(UTC)
    alone = await run_with_release(sleeper("alone", 3600))
    assert [(node_id, path) for node_id, path, _ in alone] == [("wait", ())]
    assert before + timedelta(seconds=3599) <= alone[0][2] <= datetime.now(UTC) + timedelta(seconds=3600)
    # Two delays in parallel branches: releasing the run would cut the other short.
    side_by_side = canvas(
        [
            node("start", "start"),
            node("a", "delay", data={"seconds": 0.3}),
            node("b", "delay", data={"seconds": 0.3}),
            node("end", "end", data={"output": 1}),
        ],
        [("start", "a"), ("start", "b"), ("a", "end"), ("b", "end")],
        name="side-by-side",
    )
    assert await run_with_release(side_by_side) == []
    # A delay that runs as a task run of its own (timeout_s) is held: its task would take the
    # release signal for its own failure.
    assert await run_with_release(sleeper("held", 0.3, held=True)) == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_prefect):
    pool = f"delays-{uuid.uuid4().hex[:6]}"
    with owners_stack(
        tmp_path_factory.mktemp("delay-release"),
        pg_prefect,
        bob=BOB,
        alice=ALICE,
        pool=pool,
        FLOWMAESTRO_OWNER_MAX_RUNS="",
        FLOWMAESTRO_DELAY_RELEASE_S=str(RELEASE_S),
        FLOWMAESTRO_CRASH_DETECT_S=str(CRASH_DETECT_S),
    ) as (base, database_url):
        yield base, pool, database_url


async def delayed_state(prefect_url: str, run_id: str):
    """The run's ``Delayed`` Scheduled state when it is its current one, else None."""
    states = await prefect_states(prefect_url, run_id)
    last = states[-1] if states else None
    return last if last is not None and last.name == prefect_compat.DELAY_RELEASE_STATE else None


async def running_in_pool(prefect_url: str, pool: str) -> int:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    async with PrefectClient(prefect_url) as prefect:
        return len(
            await prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
                ),
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
            )
        )


@pytest.mark.prefect
@pytest.mark.workers
async def test_twenty_runs_on_a_long_delay_are_released_and_another_owner_runs(stack, pg_prefect):
    """Before: with no owner limit, bob's 20 runs on a 1 h delay held the worker's 20 slots
    and alice's run waited the hour. Now each is released: Scheduled for its delay's end,
    running on no worker; alice's run completes at once; none is marked crashed later."""
    from prefect.client.schemas.objects import StateType

    from tests.support import wait_final

    base, pool, _ = stack
    async with owner_client(base, BOB) as bob, owner_client(base, ALICE) as alice:
        started_at = datetime.now(UTC)
        bobs = await save_and_start(bob, sleeper("bob-sleeps", 3600), runs=20)
        deadline = time.monotonic() + 240
        released = {}
        while len(released) < len(bobs) and time.monotonic() < deadline:
            for run_id in bobs:
                if run_id not in released and (state := await delayed_state(pg_prefect.api_url, run_id)):
                    released[run_id] = state
            await asyncio.sleep(0.5)
        assert len(released) == 20, f"{len(released)} of bob's 20 runs released"
        last_release = datetime.now(UTC)
        for state in released.values():  # each comes back when its own hour is over (less the early wake)
            when = state.state_details.scheduled_time
            assert started_at + timedelta(seconds=3600 - WAKE_EARLY_S) <= when + timedelta(seconds=1), when
            assert when <= last_release + timedelta(seconds=3600), when
        assert await running_in_pool(pg_prefect.api_url, pool) == 0

        begun = time.monotonic()
        [mine] = await save_and_start(alice, sleeper("alice-quick", 0.1))
        result = await wait_final(alice, mine, timeout=180)
        took = time.monotonic() - begun
        print(f"alice's run ended {took:.1f} s after it was started, with bob's 20 runs released on a 1 h delay")
        assert result["status"] == "completed", result
        assert took < 60, f"alice waited {took:.0f} s"

        # Suspended before Scheduled: the lost-worker automation saw an end, so a detection
        # window (plus Prefect's 5 s evaluation) after the last release nothing is crashed.
        wait_s = CRASH_DETECT_S + 15 - (datetime.now(UTC) - last_release).total_seconds()
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # waiting out the window in which a false crash would show
        for run_id in bobs:
            states = await prefect_states(pg_prefect.api_url, run_id)
            assert not any(s.type == StateType.CRASHED for s in states), [(s.name, s.message) for s in states]
            assert states[-1].name == prefect_compat.DELAY_RELEASE_STATE, [(s.name, s.message) for s in states]
            assert [s.name for s in states].count("Suspended") == 1

        cancelled = await asyncio.gather(*(bob.post(f"/api/executions/{run_id}/cancel") for run_id in bobs))
        assert all(c.status_code in (202, 409) for c in cancelled), [c.text for c in cancelled]
        for run_id in bobs:
            assert (await wait_final(bob, run_id, timeout=180))["status"] == "cancelled"


@pytest.mark.prefect
@pytest.mark.workers
async def test_a_released_delay_completes_on_a_worker_after_waiting_only_what_was_left(stack, pg_prefect):
    """A 20 s delay (over the release threshold) is released at once, comes back at its end
    (a worker takes it up to 10 s early: what is left, it waits in the process), and its
    node completes once, the whole delay lasting its 20 s."""
    from prefect.client.schemas.objects import StateType
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from tests.support import wait_final

    base, _, database_url = stack
    async with owner_client(base, BOB) as bob:
        [run_id] = await save_and_start(bob, sleeper("bob-twenty-seconds", 20))
        result = await wait_final(bob, run_id, timeout=240)
    assert result["status"] == "completed", result
    states = await prefect_states(pg_prefect.api_url, run_id)
    shown = [(s.name, s.message) for s in states]
    types = [s.type for s in states]
    assert StateType.CRASHED not in types, shown
    suspended = [s for s in states if s.name == "Suspended"]
    delayed = [s for s in states if s.name == prefect_compat.DELAY_RELEASE_STATE]
    assert len(suspended) == 1 and len(delayed) == 1, shown
    assert suspended[0].state_details.pause_key.startswith(prefect_compat.DELAY_RELEASE), shown
    assert states.index(delayed[0]) == states.index(suspended[0]) + 1, shown
    assert types.count(StateType.RUNNING) == 2 and types[-1] == StateType.COMPLETED, shown

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        "SELECT node_id, status, started_at, ended_at FROM node_outcomes WHERE run_id = :run_id "
                        "AND node_id = 'wait'"
                    ),
                    {"run_id": run_id},
                )
            ).all()
    finally:
        await engine.dispose()
    assert len(rows) == 1 and rows[0].status == "completed", rows
    lasted = (rows[0].ended_at - rows[0].started_at).total_seconds()
    waited = float(result["output"])
    came_back = states[types.index(StateType.RUNNING, states.index(delayed[0]))].timestamp
    print(
        f"delay of 20 s: {lasted:.1f} s from its first start to its end, {waited} s waited after the run "
        f"came back, scheduled for {delayed[0].state_details.scheduled_time}, running again at {came_back}"
    )
    assert 19.5 <= lasted < 60, lasted
    assert 0 <= waited <= 10.5 + 1, waited  # what was left when a worker took it (up to 10 s early)
    assert came_back >= delayed[0].state_details.scheduled_time - timedelta(seconds=11)
