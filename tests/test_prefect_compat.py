"""Each use of Prefect beyond its public API (flows/prefect_compat.py), checked against the
session's real Prefect server: when a Prefect upgrade changes one of them, a test here fails
and names it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import prefect
import pytest
from prefect import flow, task
from prefect._internal.compatibility.blocks import call_explicitly_async_block_method
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.results import aget_default_result_storage
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Completed, Pending

from flows import prefect_compat
from flows.flow import run_workflow
from tests.support import canvas, forge_completed, new_flow_run, node, task_runs_of


async def state_of(client, flow_run_id) -> StateType | None:
    flow_run = await client.read_flow_run(flow_run_id)
    return flow_run.state.type if flow_run.state else None


# --- the version range ---------------------------------------------------------------------------


def test_the_tested_range_is_3_9_from_3_9_1():
    tested = prefect_compat.prefect_version_tested
    assert tested("3.9.1") and tested("3.9.14") and tested("3.9.2.dev3")
    assert not tested("3.9.0") and not tested("3.8.8") and not tested("3.10.0") and not tested("4.0.0")
    assert not tested("3.10.0rc1")  # a pre-release of 3.10 is 3.10
    assert not tested("not a version")


def test_the_installed_prefect_is_in_the_tested_range():
    """Fails after a Prefect upgrade: re-run this module against it, then widen TESTED_PREFECT."""
    assert prefect_compat.prefect_version_tested(prefect.__version__), prefect.__version__
    assert prefect_compat.inline_recording_supported()


@pytest.fixture
def untested_prefect(monkeypatch):
    """The installed Prefect pretends to be a version outside the tested range."""
    monkeypatch.setattr(prefect, "__version__", "3.10.0")
    prefect_compat.inline_recording_supported.cache_clear()
    yield
    prefect_compat.inline_recording_supported.cache_clear()


def test_outside_the_range_inline_recording_is_off_with_one_warning(untested_prefect, caplog):
    with caplog.at_level(logging.WARNING, logger="flowmaestro.prefect"):
        assert prefect_compat.inline_recording_supported() is False
        assert prefect_compat.inline_recording_supported() is False
    warnings = [r for r in caplog.records if r.name == "flowmaestro.prefect"]
    assert len(warnings) == 1
    assert "3.10.0" in warnings[0].getMessage() and ">=3.9.1,<3.10" in warnings[0].getMessage()


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server", "untested_prefect")
async def test_outside_the_range_control_nodes_run_as_normal_task_runs():
    raw = canvas(
        [node("start", "start"), node("shape", "transform", data={"output": "{{ inputs.x }}"})],
        [("start", "shape")],
        inputs={"x": {"type": "integer", "default": 3}},
    )
    state = await run_workflow(canvas=raw, inputs={}, return_state=True)
    result = await state.result()
    assert result["nodes"]["shape"]["output"] == 3
    runs = await task_runs_of(result["id"], 2)
    assert sorted(r.name for r in runs) == ["shape", "start"]
    assert not [r for r in runs if "inline" in r.tags]
    assert sorted(t for r in runs for t in r.tags if t.startswith("node:")) == ["node:shape", "node:start"]


# --- task runs -----------------------------------------------------------------------------------


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_recorded_task_runs_appear_in_the_server_with_names_states_tags_times_inputs_and_logs():
    started = datetime.now(UTC) - timedelta(seconds=2)
    ended = started + timedelta(seconds=1)
    ids = {name: str(uuid.uuid4()) for name in ("loop", "shape", "check")}

    @flow
    async def recording() -> None:
        async with prefect_compat.task_run_recorder() as recorder:
            # a container reports Running when it starts, its final state when it ends
            recorder.record(
                task_run_id=ids["loop"],
                name="loop",
                task_key="flowmaestro-node-loop",
                dynamic_key="loop-top",
                tags=["node:loop"],
                started=started,
                ended=None,
            )
            recorder.record(
                task_run_id=ids["shape"],
                name="shape [1/3]",
                task_key="flowmaestro-node-transform",
                dynamic_key="shape-0",
                tags=["flowmaestro", "node:shape", "inline"],
                started=started,
                ended=ended,
                parent=ids["loop"],
            )
            recorder.record(
                task_run_id=ids["check"],
                name="check {weird}",
                task_key="flowmaestro-node-condition",
                dynamic_key="check-0",
                tags=["node:check"],
                started=started,
                ended=ended,
                error=ValueError("no such field"),
                upstream=[ids["shape"]],
                parent=ids["loop"],
                attempts=2,
            )
            recorder.log("check failed", task_run_id=ids["check"], level=logging.ERROR)
            recorder.markdown_artifact("**recording**: failed", key="recording-summary", description="the summary")
            recorder.record(
                task_run_id=ids["loop"],
                name="loop",
                task_key="flowmaestro-node-loop",
                dynamic_key="loop-top",
                tags=["node:loop"],
                started=started,
                ended=ended + timedelta(seconds=1),
            )

    async with prefect_compat.task_run_recorder() as outside:
        assert outside is None  # outside a flow run
    state = await recording(return_state=True)
    flow_run_id = str(state.state_details.flow_run_id)
    runs = {str(r.id): r for r in await task_runs_of(flow_run_id, 3)}
    assert set(runs) == set(ids.values())
    loop, shape, check = runs[ids["loop"]], runs[ids["shape"]], runs[ids["check"]]
    assert loop.state_type == StateType.COMPLETED  # the final state won over the earlier Running
    assert abs((loop.end_time - ended).total_seconds() - 1) < 0.01
    assert shape.name == "shape [1/3]" and shape.state_type == StateType.COMPLETED
    assert sorted(shape.tags) == ["flowmaestro", "inline", "node:shape"]
    assert shape.task_key == "flowmaestro-node-transform" and shape.run_count == 1
    assert abs((shape.start_time - started).total_seconds()) < 0.01
    assert abs((shape.end_time - ended).total_seconds()) < 0.01
    assert [str(i.id) for i in shape.task_inputs["__parents__"]] == [ids["loop"]]
    assert check.name == "check {weird}" and check.state_type == StateType.FAILED and check.tags == ["node:check"]
    assert check.state.message == "no such field" and check.run_count == 2
    assert [str(i.id) for i in check.task_inputs["upstream"]] == [ids["shape"]]
    async with get_client() as client:
        logs = (
            await client.request("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
        ).json()
    [line] = [entry for entry in logs if entry["name"] == "flowmaestro.node"]
    assert line["message"] == "check failed" and line["task_run_id"] == ids["check"]
    assert line["level"] == logging.ERROR
    async with get_client() as client:
        [artifact] = (
            await client.request(
                "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
            )
        ).json()
    assert (artifact["key"], artifact["type"], artifact["data"], artifact["description"]) == (
        "recording-summary",
        "markdown",
        "**recording**: failed",
        "the summary",
    )


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_inputs_set_on_a_running_task_run_are_recorded_by_the_server():
    upstream = str(uuid.uuid4())

    @task
    async def work() -> int:
        prefect_compat.set_inputs_of_running_task_run([upstream], parent=None)
        return 1

    @flow
    async def linking() -> int:
        return await work()

    state = await linking(return_state=True)
    [run] = await task_runs_of(str(state.state_details.flow_run_id), 1)
    assert [str(i.id) for i in run.task_inputs["upstream"]] == [upstream]
    assert "__parents__" not in run.task_inputs


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_tags_added_to_a_running_task_run_are_recorded_by_the_server():
    @task
    async def work() -> int:
        prefect_compat.add_tags_to_running_task_run(["node:work", "type:http"])
        return 1

    @flow
    async def tagging() -> int:
        return await work()

    assert work.tags == set()
    state = await tagging(return_state=True)
    [run] = await task_runs_of(str(state.state_details.flow_run_id), 1)
    assert sorted(run.tags) == ["node:work", "type:http"]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_cache_hit_is_recognised():
    key = f"compat-{uuid.uuid4().hex}"
    calls = []

    @task(cache_key_fn=lambda context, parameters: key, persist_result=True)
    async def cached() -> str:
        calls.append(1)
        return "value"

    @flow
    async def twice() -> list[bool]:
        first = await cached(return_state=True)
        second = await cached(return_state=True)
        assert await second.result() == "value"
        return [prefect_compat.is_cached(first), prefect_compat.is_cached(second)]

    assert await twice() == [False, True]
    assert calls == [1]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_timed_out_task_run_is_recognised_and_a_failed_one_is_not():
    @task(timeout_seconds=0.3)
    async def slow() -> None:
        await asyncio.sleep(10)

    @task
    async def broken() -> None:
        raise ValueError("broken")

    @flow
    async def failing() -> list[bool]:
        timed_out = await slow(return_state=True)
        failed = await broken(return_state=True)
        assert timed_out.is_failed() and failed.is_failed()
        return [prefect_compat.is_timed_out(timed_out), prefect_compat.is_timed_out(failed)]

    assert await failing() == [True, False]


# --- flow runs -----------------------------------------------------------------------------------


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_flow_run_created_beforehand_runs_in_process():
    @flow(name="compat-created-beforehand")
    async def double(n: int) -> int:
        return n * 2

    async with get_client() as client:
        flow_run = await client.create_flow_run(double, parameters={"n": 21}, state=Pending())
    running = prefect_compat.start_flow_run_in_process(double, flow_run, {"n": 21})
    assert isinstance(running, asyncio.Task)
    state = await asyncio.wait_for(running, 60)
    assert state.is_completed() and await state.result() == 42
    assert state.state_details.flow_run_id == flow_run.id


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_cancellation_request_reaches_an_in_process_run_as_cancelling():
    """The run sees Cancelling (nothing else acts on it in process) and ends itself Cancelled."""
    seen = []

    @flow(name="compat-cancellable")
    async def watching() -> object:
        async with get_client() as client:
            for _ in range(600):
                state = await state_of(client, uuid.UUID(current_flow_run.id))
                if state in (StateType.CANCELLING, StateType.CANCELLED):
                    seen.append(state)
                    return Cancelled(message="stopped by request")
                await asyncio.sleep(0.1)
        return "never cancelled"

    async with get_client() as client:
        flow_run = await client.create_flow_run(watching, state=Pending())
        running = prefect_compat.start_flow_run_in_process(watching, flow_run, {})
        for _ in range(300):
            if await state_of(client, flow_run.id) == StateType.RUNNING:
                break
            await asyncio.sleep(0.1)
        await prefect_compat.request_cancellation(client, flow_run.id)
        state = await asyncio.wait_for(running, 60)
        assert seen == [StateType.CANCELLING]
        assert state.type == StateType.CANCELLED
        assert await state_of(client, flow_run.id) == StateType.CANCELLED


class Decision(RunInput):
    approved: bool


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_ending_a_pause_resumes_the_paused_run():
    @flow(name="compat-paused")
    async def pausing() -> dict[str, object]:
        run_id = uuid.UUID(current_flow_run.id)
        pause = asyncio.create_task(pause_flow_run(wait_for_input=Decision, timeout=3600, poll_interval=1, key="ask-1"))
        async with get_client() as client:
            for _ in range(300):
                if await state_of(client, run_id) == StateType.PAUSED:
                    break
                await asyncio.sleep(0.1)
            paused = await state_of(client, run_id)
            other_key = await prefect_compat.end_pause(client, run_id, "ask-2")  # not the pause: left alone
            still = await state_of(client, run_id)
            pause.cancel()
            ended = await prefect_compat.end_pause(client, run_id, "ask-1")
            resumed = await state_of(client, run_id)
            again = await prefect_compat.end_pause(client, run_id, "ask-1")  # no longer paused
        return {
            "paused": paused,
            "other_key": other_key,
            "still": still,
            "ended": ended,
            "resumed": resumed,
            "again": again,
        }

    state = await asyncio.wait_for(pausing(return_state=True), 120)
    assert state.is_completed(), state
    assert await state.result() == {
        "paused": StateType.PAUSED,
        "other_key": False,
        "still": StateType.PAUSED,
        "ended": True,
        "resumed": StateType.RUNNING,
        "again": False,
    }


async def test_recovery_automations_are_created_once_and_not_updated_when_unchanged(prefect_server):
    """Updating an automation forgets the runs its trigger watches, so a worker starting
    next to a dead one must leave unchanged automations alone (sets dump in any order)."""
    from prefect.client.orchestration import get_client

    from deployments.recovery import ensure_recovery_automations, recovery_automations

    pool = f"recovery-{uuid.uuid4().hex[:6]}"
    async with get_client() as client:
        updates = []
        real_update = client.update_automation

        async def counting_update(automation_id, automation):
            updates.append(automation.name)
            await real_update(automation_id, automation)

        # The child-run automation is one for the whole server: another worker of this test
        # session may have made it with its own window, so only the calls after the first count.
        await ensure_recovery_automations(client, pool, 30)
        client.update_automation = counting_update
        wanted = recovery_automations(pool, 30)
        first = {a.name: a.id for w in wanted for a in await client.read_automations_by_name(w.name)}
        assert set(first) == {w.name for w in wanted}
        await ensure_recovery_automations(client, pool, 30)
        assert updates == [], "unchanged automations were updated"
        again = {a.name: a.id for w in wanted for a in await client.read_automations_by_name(w.name)}
        assert again == first
        await ensure_recovery_automations(client, pool, 45)  # a new window: updated in place
        assert sorted(updates) == sorted(w.name for w in wanted if w.trigger.posture == "Proactive")
        changed = {a.name: a for w in wanted for a in await client.read_automations_by_name(w.name)}
        assert {n: a.id for n, a in changed.items()} == first
        assert changed[wanted[0].name].trigger.within.total_seconds() == 45


def test_an_automation_read_back_from_another_process_is_not_a_change():
    """Sets dump in the order of their process's string hashes: the same trigger read back
    by another worker lists ``after``/``expect`` in another order."""
    from types import SimpleNamespace

    from deployments.recovery import _differs, recovery_automations

    wanted = recovery_automations("pool", 30)[0]
    dumped = wanted.trigger.model_dump(mode="json")
    reordered = {**dumped, "after": list(reversed(dumped["after"])), "expect": list(reversed(dumped["expect"]))}
    assert reordered != dumped
    stored = SimpleNamespace(
        trigger=reordered, actions=[a.model_dump(mode="json") for a in wanted.actions], enabled=True
    )
    assert not _differs(stored, wanted)
    assert _differs(SimpleNamespace(**{**vars(stored), "trigger": {**reordered, "within": 31.0}}), wanted)


async def test_next_schedule_dates_are_the_server_schedules_dates():
    """The client's schedule models compute no dates; the server twins the scheduler
    service uses do, daylight saving included (a local time that does not exist moves on)."""

    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

    from flows.prefect_compat import next_schedule_dates

    start = datetime(2027, 3, 26, tzinfo=UTC)
    dates = await next_schedule_dates(CronSchedule(cron="30 2 * * *", timezone="Europe/Paris"), 4, start)
    assert [d.isoformat() for d in dates] == [
        "2027-03-26T02:30:00+01:00",
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:30:00+02:00",
        "2027-03-29T02:30:00+02:00",
    ]
    every = await next_schedule_dates(IntervalSchedule(interval=60, anchor_date=start), 2, start)
    assert [d.isoformat() for d in every] == ["2027-03-26T00:00:00+00:00", "2027-03-26T00:01:00+00:00"]


# --- results ------------------------------------------------------------------------------------


async def plant(storage, key: str, content: bytes) -> None:
    """Write a file into result storage, as anyone who can write there could."""
    await call_explicitly_async_block_method(storage, "write_path", (key,), {"content": content})


def stored_record(serializer: str, result: str) -> bytes:
    """A result record as Prefect's result store writes one to storage."""
    return json.dumps(
        {
            "metadata": {
                "storage_key": None,
                "serializer": {"type": serializer},
                "prefect_version": prefect.__version__,
                "storage_block_id": None,
            },
            "result": result,
        }
    ).encode()


async def forged_state(storage_key: str, serializer: dict, block_id: uuid.UUID | None = None):
    """A new flow run forced Completed through the API with data pointing at ``storage_key``,
    as read back from the server (``tests.support.forge_completed``)."""
    return await forge_completed(await new_flow_run(), storage_key, serializer, block_id)


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_flow_result_is_plain_json_and_read_back_in_memory_or_from_storage():
    @flow(persist_result=True, result_serializer=prefect_compat.RESULT_SERIALIZER)
    async def answering() -> dict:
        return {"status": "completed", "output": ["x", 1, None]}

    state = await answering(return_state=True)
    assert await prefect_compat.run_result(state) == {"status": "completed", "output": ["x", 1, None]}
    async with get_client() as client:  # the same state, as any other process reads it
        from_server = (await client.read_flow_run(state.state_details.flow_run_id)).state
    assert from_server.data.serializer.type == "flowmaestro-json"
    storage = await aget_default_result_storage()
    # What is in storage: the value as plain JSON (the state holds its metadata), no pickle.
    stored = await prefect_compat.read_path(storage, from_server.data.storage_key)
    assert json.loads(stored) == {"status": "completed", "output": ["x", 1, None]}
    assert await prefect_compat.run_result(from_server) == {"status": "completed", "output": ["x", 1, None]}


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_task_result_is_held_in_memory():
    @task(persist_result=False)
    async def value() -> dict:
        return {"output": 1}

    @flow
    async def running() -> tuple:
        state = await value(return_state=True)
        return state.data.__class__.__name__, await prefect_compat.run_result(state)

    assert await running() == ("ResultRecord", {"output": 1})


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_results_a_state_set_through_the_api_points_elsewhere_are_refused(tmp_path):
    storage = await aget_default_result_storage()
    key = f"planted-{uuid.uuid4().hex}"
    marker = tmp_path / "unpickled"
    # Prefect's pickle serializer would run this; Prefect's json one would import and call it.
    pickled = base64.b64encode(pickle.dumps(MarkerOnUnpickle(str(marker)))).decode()
    await plant(storage, key, stored_record("pickle", pickled))
    await plant(
        storage,
        key + "-json",
        stored_record("json", json.dumps({"__class__": "pathlib.Path.touch", "data": str(marker)})),
    )
    await plant(storage, key + "-ours", stored_record("pickle", pickled))
    await plant(storage, key + "-raw", pickled.encode())
    refused = [
        (await forged_state(key, {"type": "pickle"}), "'pickle'"),
        (await forged_state(key + "-json", {"type": "json"}), "'json'"),
        (await forged_state(key, {"type": "flowmaestro-json"}, uuid.uuid4()), "another storage"),
        (await forged_state(key + "-ours", {"type": "flowmaestro-json"}), "'pickle'"),  # the file says pickle
        (await forged_state("no-such-file", {"type": "flowmaestro-json"}), "could not be read"),
        (await forged_state(key + "-raw", {"type": "flowmaestro-json"}), "could not be read"),  # a bare pickle
        (Completed(data={"status": "completed"}), "dict data"),  # data attached as is
    ]
    for state, why in refused:
        with pytest.raises(prefect_compat.UntrustedResult, match=why):
            await prefect_compat.run_result(state)
    assert not marker.exists()
    assert await prefect_compat.run_result(Completed(data=None)) is None


class MarkerOnUnpickle:
    """Unpickled, it touches a marker file: harmless proof that unpickling ran code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


async def deployment_of(client, a_flow) -> uuid.UUID:
    """A deployment of ``a_flow`` in a work pool of its own (Prefect suspends only runs of
    deployments)."""
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"compat-{uuid.uuid4().hex[:6]}"
    await client.create_work_pool(WorkPoolCreate(name=pool, type="flowmaestro"))
    return await client.create_deployment(flow_id=await client.create_flow(a_flow), name=pool, work_pool_name=pool)


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_releasing_a_run_until_a_time_suspends_it_then_schedules_it_for_that_time():
    """Suspended first (the lost-worker automation counts it as an end), then Scheduled for
    ``until``; the engine lets ``Pause`` out and changes no state after it; keys are fresh."""
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    keys = {}

    @flow(name="compat-released")
    async def releasing() -> None:
        run_id = uuid.UUID(current_flow_run.id)
        async with get_client() as client:
            keys["first"] = await prefect_compat.fresh_pause_key(client, run_id, "fm-delay:wait")
            await prefect_compat.release_flow_run(client, run_id, keys["first"], until=until)

    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(await deployment_of(client, releasing))
        running = prefect_compat.start_flow_run_in_process(releasing, flow_run, {})
        with pytest.raises(prefect.exceptions.Pause):
            await asyncio.wait_for(running, 60)
        await asyncio.sleep(1)  # anything the engine would still write after the Pause
        states = sorted(await client.read_flow_run_states(flow_run.id), key=lambda s: s.timestamp)
        again = await prefect_compat.fresh_pause_key(client, flow_run.id, "fm-delay:wait")
    assert keys["first"] == "fm-delay:wait" and again == "fm-delay:wait-2"
    assert [s.type for s in states[-3:]] == [StateType.RUNNING, StateType.PAUSED, StateType.SCHEDULED], states
    suspended, scheduled = states[-2:]
    assert suspended.name == "Suspended" and suspended.state_details.pause_reschedule
    assert suspended.state_details.pause_key == "fm-delay:wait"
    assert abs((suspended.state_details.pause_timeout - until).total_seconds()) <= 1
    assert scheduled.name == prefect_compat.DELAY_RELEASE_STATE
    assert scheduled.state_details.scheduled_time == until


@pytest.mark.prefect
async def test_runs_left_suspended_on_a_delay_are_found_and_scheduled_for_its_end(prefect_server):
    """What the sweep does for a run whose worker died between suspending it and scheduling it:
    only a delay's suspension (not an approval's), only one suspended before the given time,
    once. (Delays end an hour ahead: Prefect itself fails a paused run whose pause timed out.)"""
    from prefect.states import Suspended

    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)

    @flow(name="compat-delay-sweep")
    async def nothing() -> None:
        return None

    async with get_client() as client:
        deployment_id = await deployment_of(client, nothing)
        pool = (await client.read_deployment(deployment_id)).work_pool_name
        runs = {}
        for name, key, expires in (("delay", "fm-delay:wait", ends), ("approval", "ask-1", None)):
            flow_run = await client.create_flow_run_from_deployment(deployment_id)
            await client.set_flow_run_state(
                flow_run.id, Suspended(pause_key=key, pause_expiration_time=expires), force=True
            )
            runs[name] = flow_run.id
        written = datetime.now(UTC)
        # Suspended just now: not stranded yet (its worker schedules it within a second).
        assert await prefect_compat.read_stranded_delay_releases(client, pool, written - timedelta(minutes=5)) == []
        later = written + timedelta(minutes=5)
        found = await prefect_compat.read_stranded_delay_releases(client, pool, later, page=1)
        assert [r.id for r in found] == [runs["delay"]]  # read a page of one at a time: both seen
        assert await prefect_compat.continue_delay_release(client, found[0]) is True
        assert await prefect_compat.continue_delay_release(client, found[0]) is False  # it moved meanwhile
        state = (await client.read_flow_run(runs["delay"])).state
        assert state.type == StateType.SCHEDULED and state.name == prefect_compat.DELAY_RELEASE_STATE
        assert abs((state.state_details.scheduled_time - ends).total_seconds()) < 1
        assert await prefect_compat.read_stranded_delay_releases(client, pool, later) == []


# --- the scheduler's runs, answers to pauses, released runs, the worker's hooks ----------------


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_run_of_a_deployment_schedule_names_its_schedule():
    """Prefect's scheduler keys a schedule's runs ``scheduled <deployment> <schedule> <time>``;
    ``schedule_id_of`` reads the schedule back (a run created by hand has none)."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    @flow(name="compat-scheduled")
    async def nothing() -> None:
        return None

    async with get_client() as client:
        deployment_id = await client.create_deployment(
            flow_id=await client.create_flow(nothing),
            name=f"compat-{uuid.uuid4().hex[:6]}",
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(days=30)))],
        )
        [schedule] = (await client.read_deployment(deployment_id)).schedules
        # What the scheduler service does every loop (it may well have done it already).
        response = await client.request(
            "POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={"max_runs": 2}
        )
        assert response.status_code < 300
        deadline = asyncio.get_running_loop().time() + 60
        while not (
            runs := await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
        ):
            assert asyncio.get_running_loop().time() < deadline, "the scheduler made no run"
            await asyncio.sleep(0.5)
        by_hand = await client.create_flow_run_from_deployment(deployment_id)
        await client.delete_deployment(deployment_id)
    scheduled = [run for run in runs if run.auto_scheduled]
    assert scheduled, runs
    assert {prefect_compat.schedule_id_of(run) for run in scheduled} == {str(schedule.id)}
    assert prefect_compat.schedule_id_of(by_hand) is None


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_an_answer_through_prefects_resume_is_read_back_by_its_pause_key():
    """Prefect keeps the answer to a pause as the input ``<state name>-<pause key>-response``,
    for the key given and its fresh variants (``key-2``...), and for no other key."""
    from prefect.input import keyset_from_paused_state
    from prefect.states import Paused, Suspended

    assert keyset_from_paused_state(Paused(pause_key="ask-9"))["response"] == "paused-ask-9-response"
    assert keyset_from_paused_state(Suspended(pause_key="ask-9"))["response"] == "suspended-ask-9-response"

    @flow(name="compat-answered")
    async def answered() -> dict[str, object]:
        run_id = uuid.UUID(current_flow_run.id)
        answers = {}
        async with get_client() as client:
            for key in ("ask-9", "ask-9-2"):
                pause = asyncio.create_task(
                    pause_flow_run(wait_for_input=Decision, timeout=3600, poll_interval=1, key=key)
                )
                for _ in range(300):
                    if await state_of(client, run_id) == StateType.PAUSED:
                        break
                    await asyncio.sleep(0.1)
                await client.resume_flow_run(run_id, run_input={"approved": key == "ask-9"})
                answers[key] = (await asyncio.wait_for(pause, 60)).approved
        return answers

    state = await asyncio.wait_for(answered(return_state=True), 180)
    assert state.is_completed(), state
    assert await state.result() == {"ask-9": True, "ask-9-2": False}
    async with get_client() as client:
        found = await prefect_compat.read_pause_answers(client, state.state_details.flow_run_id, "ask-9")
        other = await prefect_compat.read_pause_answers(client, state.state_details.flow_run_id, "ask-8")
    assert sorted((key, json.loads(value)["approved"]) for key, value in found) == [
        ("paused-ask-9-2-response", False),
        ("paused-ask-9-response", True),
    ]
    assert other == []


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_released_run_is_recognised_and_scheduled_again_resuming():
    """A run suspended (its process let go of it) is released, a paused one is not; putting it
    back makes it Scheduled ``Resuming``, which Prefect's own resume refuses without input."""
    from prefect.states import Paused, Suspended

    @flow(name="compat-released-again")
    async def nothing() -> None:
        return None

    async with get_client() as client:
        deployment_id = await deployment_of(client, nothing)
        suspended = await client.create_flow_run_from_deployment(deployment_id)
        await client.set_flow_run_state(suspended.id, Suspended(pause_key="ask-1"), force=True)
        paused = await client.create_flow_run_from_deployment(deployment_id)
        await client.set_flow_run_state(paused.id, Paused(pause_key="ask-1"), force=True)
        suspended_state = (await client.read_flow_run(suspended.id)).state
        paused_state = (await client.read_flow_run(paused.id)).state
        assert prefect_compat.is_released(suspended_state) and not prefect_compat.is_released(paused_state)
        assert not prefect_compat.is_released(None)
        await prefect_compat.schedule_released(client, suspended.id, "approval answered")
        state = (await client.read_flow_run(suspended.id)).state
    assert state.type == StateType.SCHEDULED and state.name == "Resuming" and state.message == "approval answered"


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_polling_worker_hands_its_due_runs_to_filter_due_and_submits_what_it_returns():
    """``PollingWorker``'s hooks over ``BaseWorker``'s private poll: the due runs (entries with
    ``flow_run``) reach ``filter_due``; only what it returns is submitted; the pool's id, the
    runs being submitted, the logger and the description are there."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.base import BaseJobConfiguration, BaseWorkerResult

    submitted: list[uuid.UUID] = []
    seen: list[list[uuid.UUID]] = []

    class Polling(prefect_compat.PollingWorker):
        type = "fm-compat-polling"
        job_configuration = BaseJobConfiguration
        description = "a worker of the contract test"

        async def filter_due(self, due):
            seen.append([entry.flow_run.id for entry in due])
            assert isinstance(self.submitting_ids, set)
            self.logger.info("filtering %d due runs", len(due))
            return [entry for entry in due if entry.flow_run.name == "keep"]

        async def run(self, flow_run, configuration, task_status=None):
            submitted.append(flow_run.id)
            if task_status is not None:
                task_status.started("in-test")
            return BaseWorkerResult(identifier="in-test", status_code=0)

    @flow(name="compat-polled")
    async def nothing() -> None:
        return None

    assert Polling.get_description() == "a worker of the contract test"
    pool = f"compat-poll-{uuid.uuid4().hex[:6]}"
    async with get_client() as client:
        created = await client.create_work_pool(WorkPoolCreate(name=pool, type=Polling.type))
        deployment_id = await client.create_deployment(
            flow_id=await client.create_flow(nothing), name=pool, work_pool_name=pool
        )
        keep = await client.create_flow_run_from_deployment(deployment_id, name="keep")
        drop = await client.create_flow_run_from_deployment(deployment_id, name="drop")
    async with Polling(work_pool_name=pool) as worker:
        await worker.sync_with_backend()
        assert worker.work_pool_id == str(created.id)
        deadline = asyncio.get_running_loop().time() + 60
        while not submitted:
            assert asyncio.get_running_loop().time() < deadline, f"nothing submitted; due runs seen: {seen}"
            await worker.get_and_submit_flow_runs()
            await asyncio.sleep(0.5)
    assert any({keep.id, drop.id} <= set(ids) for ids in seen), seen
    assert submitted == [keep.id]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_polling_worker_proposes_pending_only_and_builds_its_configuration_reading_nothing():
    """Two requests fewer per run: no ``Submitting`` sub-state after Pending, and the job
    configuration of ``InProcessJobConfiguration`` built from the work pool alone (Prefect's
    reads the run's deployment, again, and its flow). The run is still taken Pending, once:
    a second Pending proposal is refused, so a second worker cannot take it."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.base import BaseWorkerResult

    configurations: list[object] = []

    class InProcess(prefect_compat.PollingWorker):
        type = "fm-compat-in-process"
        job_configuration = prefect_compat.InProcessJobConfiguration

        async def run(self, flow_run, configuration, task_status=None):
            configurations.append(configuration)
            if task_status is not None:
                task_status.started("in-test")
            return BaseWorkerResult(identifier="in-test", status_code=0)

    @flow(name="compat-in-process")
    async def nothing() -> None:
        return None

    pool = f"compat-inproc-{uuid.uuid4().hex[:6]}"
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=pool, type=InProcess.type))
        deployment_id = await client.create_deployment(
            flow_id=await client.create_flow(nothing), name=pool, work_pool_name=pool
        )
        flow_run = await client.create_flow_run_from_deployment(deployment_id)
    async with InProcess(work_pool_name=pool) as worker:
        await worker.sync_with_backend()

        async def no_read(*args, **kwargs):
            raise AssertionError(f"the configuration read Prefect: {args}")

        worker.client.read_flow = no_read  # Prefect's configuration reads the run's flow here
        deadline = asyncio.get_running_loop().time() + 60
        while not configurations:
            assert asyncio.get_running_loop().time() < deadline, "the run was not submitted"
            await worker.get_and_submit_flow_runs()
            await asyncio.sleep(0.5)
    assert [type(c) for c in configurations] == [prefect_compat.InProcessJobConfiguration]
    assert configurations[0].labels["prefect.io/flow-run-id"] == str(flow_run.id)
    async with get_client() as client:
        names = [s.name for s in await client.read_flow_run_states(flow_run.id)]
        assert names == ["Scheduled", "Pending"], names
        second = await client.set_flow_run_state(flow_run.id, Pending())
    assert second.status != SetStateStatus.ACCEPT, "a second Pending was accepted"


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_flow_bound_to_the_default_result_storage_runs_without_reading_it_again(monkeypatch):
    """``with_default_result_storage`` reads the server's default result storage once; runs of
    the flow it returns do not (the engine reads it for every run otherwise), and keep what
    they persist where an unbound flow would: Prefect's local storage path here."""
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
    from prefect.settings import get_current_settings

    @flow(name="compat-storage", persist_result=True, result_serializer=prefect_compat.RESULT_SERIALIZER)
    async def answer() -> int:
        return 42

    bound = await prefect_compat.with_default_result_storage(answer)
    assert bound.result_storage == Path(get_current_settings().results.local_storage_path)
    reads: list[str] = []
    read_async, read_sync = (c.read_server_default_result_storage for c in (PrefectClient, SyncPrefectClient))

    async def counted_async(self):
        reads.append("admin/storage")
        return await read_async(self)

    def counted_sync(self):  # the flow engine's (``ResultStore.update_for_flow``)
        reads.append("admin/storage")
        return read_sync(self)

    monkeypatch.setattr(PrefectClient, "read_server_default_result_storage", counted_async)
    monkeypatch.setattr(SyncPrefectClient, "read_server_default_result_storage", counted_sync)
    unbound_state = await answer(return_state=True)
    assert reads == ["admin/storage"]  # what the binding saves: one read per run
    bound_state = await bound(return_state=True)
    assert reads == ["admin/storage"]
    assert await prefect_compat.run_result(bound_state) == await prefect_compat.run_result(unbound_state) == 42
    stored = Path(bound_state.data.metadata.storage_key).name
    assert (Path(get_current_settings().results.local_storage_path) / stored).is_file(), stored


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_with_the_suspension_observer_off_a_run_suspended_from_outside_lets_go_when_marked(monkeypatch):
    """A worker turns off the engine's per-run suspension observer; a deployment run it
    executes that is suspended through the API (not by itself) stops at its next task once
    the worker marks it, as the observer would have made it."""
    import prefect.flow_engine
    from prefect.states import Suspended

    # Restored after the test: the switch is process-wide.
    monkeypatch.setattr(
        prefect.flow_engine, "observe_flow_run_suspension", prefect.flow_engine.observe_flow_run_suspension
    )
    assert prefect_compat.leave_suspensions_to_the_worker()
    steps: list[int] = []

    @task
    async def tick(n: int) -> int:
        steps.append(n)
        return n

    @flow(name="compat-suspended-outside")
    async def stepping() -> None:
        for n in range(600):
            await tick(n)
            await asyncio.sleep(0.05)

    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(await deployment_of(client, stepping))
        running = prefect_compat.start_flow_run_in_process(stepping, flow_run, {})
        for _ in range(300):
            if steps:
                break
            await asyncio.sleep(0.1)
        await client.set_flow_run_state(flow_run.id, Suspended(pause_key="outside"), force=True)
        await asyncio.sleep(0.5)
        assert not running.done(), "nothing noticed the suspension without the observer"
        assert prefect_compat.mark_suspended(await client.read_flow_run(flow_run.id))
        with pytest.raises(prefect.exceptions.Pause):
            await asyncio.wait_for(running, 60)
        assert (await client.read_flow_run(flow_run.id)).state.name == "Suspended"
        assert not prefect_compat.mark_suspended(await client.read_flow_run(flow_run.id)), "no engine runs it now"
