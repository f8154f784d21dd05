"""Schedules through the API, on the session's real Prefect server (its scheduler service
loops every 2 s, see conftest) with a worker in this process: they are the workflow
deployment's Prefect schedules, and their runs are executions like any other."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.exceptions import ObjectNotFound

from api.app import create_app
from api.settings import ApiSettings
from deployments.workflow_deployments import deployment_name
from tests.support import canvas, eventually, hello, node, save

pytestmark = pytest.mark.prefect

KEY = "sched-key"
DEADLINE_S = 120  # generous: the scheduler loops every 2 s, the worker polls every 0.5 s
INTERVAL_S = 10  # the shortest interval a schedule may have
SCHEDULER_LOOP_S = 2  # PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS of the session's server (conftest)
QUIET_S = INTERVAL_S + 2 * SCHEDULER_LOOP_S
"""How long a paused or deleted schedule is watched for new runs: an active schedule gets its
next runs from the scheduler's next loop (it creates them ahead, at least three), and a run
left behind would come due within an interval."""
SLOW_S = 15
"""How long a run of the overlap tests' slow workflow takes: half an interval more than the
interval, so its runs come due faster than they end and every one after the first collides
(one collision missed under load is followed by the next, ten seconds later)."""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory, prefect_server, in_process_workers):
    from store.db import upgrade_schema

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('schedules') / 'api.db'}"
    pool = f"schedules-{uuid.uuid4().hex[:6]}"
    await upgrade_schema(url)
    await in_process_workers.start(url, pool)
    return url, pool


@pytest.fixture
async def api(stack, tmp_path, test_handlers):
    url, pool = stack
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    settings = ApiSettings(
        database_url=url, api_keys=f"{alice}:{KEY}-{alice},{bob}:{KEY}-{bob}", home=tmp_path, work_pool=pool
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {KEY}-{alice}"},
        ) as client:
            client.bob = {"Authorization": f"Bearer {KEY}-{bob}"}
            client.app = app
            yield client


async def create(api, raw) -> str:
    return (await save(api, raw))["id"]


async def until(check, what: str, timeout: float = DEADLINE_S) -> Any:
    """``tests.support.eventually`` at this module's pace (Prefect is polled twice a second)."""
    return await eventually(check, timeout=timeout, what=what, interval=0.5)


async def deployment_id(api, workflow_id: str):
    saved, _plan, found = await api.app.state.runs.deployment_of(owner_of(api), workflow_id)
    return found


def owner_of(api) -> str:
    key = api.headers["Authorization"].removeprefix("Bearer ")
    return api.app.state.key_owners[key]


async def flow_runs(deployment) -> list[Any]:
    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])), limit=200
        )


async def scheduled_executions(api, workflow_id: str, schedule_id: str, status: str = "completed") -> list[Any]:
    listed = (await api.get("/api/executions", params={"workflow_id": workflow_id, "trigger": "schedule"})).json()
    return [e for e in listed if e["status"] == status and e["trigger"].get("schedule_id") == schedule_id]


async def stays_quiet(deployment, known: set, seconds: float = QUIET_S) -> None:
    """No new flow run of the deployment appears for ``seconds`` (``QUIET_S``): the one
    check here that must watch a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        new = {str(r.id) for r in await flow_runs(deployment)} - known
        assert not new, f"runs appeared: {new}"
        await asyncio.sleep(1)


async def runs_after_a_scheduler_loop(deployment) -> set[str]:
    """The ids of the deployment's flow runs, once a scheduler loop under way when the
    schedule was paused or deleted has ended: Prefect drops the schedule's future runs in
    the request's transaction, and a loop that read the schedule before it may insert the
    runs it computed after it; nothing tells when a loop has ended. (Waiting instead for
    every run of the deployment to end failed once in four runs of this module on a loaded
    machine, cause not found.)"""
    await asyncio.sleep(SCHEDULER_LOOP_S)
    return {str(r.id) for r in await flow_runs(deployment)}


async def prefect_rest(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """A raw Prefect REST call, retried while Prefect on SQLite answers 5xx (database locked
    under load), as its own client does."""
    for _ in range(10):
        response = await client.request(method, url, **kwargs)
        if response.status_code < 500:
            return response
        await asyncio.sleep(1)
    return response


async def no_future_runs(deployment) -> bool:
    runs = await flow_runs(deployment)
    return not [r for r in runs if r.state and r.state.is_scheduled()]


async def test_an_interval_schedule_runs_with_its_inputs_pauses_resumes_and_stops_when_deleted(api):
    workflow_id = await create(api, hello())
    created = await api.post(
        f"/api/workflows/{workflow_id}/schedules", json={"interval_s": INTERVAL_S, "inputs": {"who": "Sched"}}
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert {k: schedule[k] for k in ("workflow_id", "interval_s", "timezone", "inputs", "active", "overlap")} == {
        "workflow_id": workflow_id,
        "interval_s": 10.0,
        "timezone": "UTC",
        "inputs": {"who": "Sched"},
        "active": True,
        "overlap": "allow",
    }
    assert "cron" not in schedule and "rrule" not in schedule
    times = [datetime.fromisoformat(t) for t in schedule["next_runs"]]
    assert len(times) == 5 and {(b - a).total_seconds() for a, b in zip(times, times[1:])} == {10.0}
    sid = schedule["id"]

    ran = await until(lambda: scheduled_executions(api, workflow_id, sid), "a scheduled run completed")
    result = (await api.get(f"/api/executions/{ran[0]['id']}")).json()
    assert result["output"] == "Hello Sched"
    assert ran[0]["trigger"] == {"type": "schedule", "schedule_id": sid}

    paused = await api.patch(f"/api/workflows/{workflow_id}/schedules/{sid}", json={"active": False})
    assert paused.status_code == 200 and paused.json()["active"] is False and paused.json()["next_runs"] == []
    assert [s["active"] for s in (await api.get(f"/api/workflows/{workflow_id}/schedules")).json()] == [False]
    deployment = await deployment_id(api, workflow_id)
    await until(lambda: no_future_runs(deployment), "paused: Prefect dropped the future runs")
    await stays_quiet(deployment, await runs_after_a_scheduler_loop(deployment))

    before = {e["id"] for e in await scheduled_executions(api, workflow_id, sid)}
    resumed = await api.patch(f"/api/workflows/{workflow_id}/schedules/{sid}", json={"active": True})
    assert resumed.json()["active"] is True and len(resumed.json()["next_runs"]) == 5

    async def new_run():
        return [e for e in await scheduled_executions(api, workflow_id, sid) if e["id"] not in before]

    await until(new_run, "resumed: a new scheduled run completed")

    assert (await api.delete(f"/api/workflows/{workflow_id}/schedules/{sid}")).status_code == 204
    assert (await api.get(f"/api/workflows/{workflow_id}/schedules")).json() == []
    await until(lambda: no_future_runs(deployment), "deleted: Prefect dropped the future runs")
    await stays_quiet(deployment, await runs_after_a_scheduler_loop(deployment))


async def test_cron_next_runs_follow_the_time_zone_across_daylight_saving(api):
    workflow_id = await create(api, hello())
    # 09:00 in Paris on March 1 (winter time, +01:00) and March 31 (always after the last
    # Sunday of March, when summer time starts: +02:00).
    created = await api.post(
        f"/api/workflows/{workflow_id}/schedules",
        json={"cron": "0 9 1,31 3 *", "timezone": "Europe/Paris", "inputs": {"who": "x"}},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["cron"] == "0 9 1,31 3 *" and body["timezone"] == "Europe/Paris"
    times = [datetime.fromisoformat(t) for t in body["next_runs"]]
    assert len(times) == 5 and all(t.hour == 9 and t.minute == 0 for t in times)
    utc_hours = [t.astimezone(UTC).hour for t in times]
    offsets = [t.utcoffset().total_seconds() / 3600 for t in times]
    expected = [
        datetime(t.year, t.month, t.day, 9, tzinfo=ZoneInfo("Europe/Paris")).utcoffset().total_seconds() / 3600
        for t in times
    ]
    assert offsets == expected and set(offsets) == {1.0, 2.0}
    assert set(utc_hours) == {8, 7}
    assert times[0] > datetime.now(UTC)


async def test_overlap_skip_cancels_a_scheduled_run_while_one_goes(api):
    slow = canvas(
        [node("start", "start"), node("slow", "test_sleep", data={"seconds": SLOW_S})],
        [("start", "slow")],
        name=f"slow-{uuid.uuid4().hex[:6]}",
    )
    workflow_id = await create(api, slow)
    created = await api.post(
        f"/api/workflows/{workflow_id}/schedules", json={"interval_s": INTERVAL_S, "overlap": "skip"}
    )
    assert created.status_code == 201 and created.json()["overlap"] == "skip", created.text
    deployment = await deployment_id(api, workflow_id)
    async with get_client() as client:
        found = await client.read_deployment(deployment)
    assert found.global_concurrency_limit is not None and found.global_concurrency_limit.limit == 1
    assert found.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW

    async def skipped_and_finished():
        runs = await flow_runs(deployment)
        cancelled = [r for r in runs if r.state and r.state.is_cancelled()]
        completed = [r for r in runs if r.state and r.state.is_completed()]
        return (cancelled, completed) if cancelled and completed else None

    cancelled, completed = await until(skipped_and_finished, "a scheduled run skipped, one completed", 150)
    # Skipped by Prefect when the worker proposed Pending: the run never ran.
    assert all("concurrency limit" in (r.state.message or "") and r.run_count == 0 for r in cancelled), cancelled
    ran = sorted((r for r in await flow_runs(deployment) if r.run_count), key=lambda r: r.start_time)
    assert ran
    for first, second in zip(ran, ran[1:]):  # never two at once
        assert first.end_time is not None and first.end_time <= second.start_time, (first, second)

    assert (await api.delete(f"/api/workflows/{workflow_id}/schedules/{created.json()['id']}")).status_code == 204
    async with get_client() as client:
        found = await client.read_deployment(deployment)
    assert found.global_concurrency_limit is None  # no schedule asks for a limit any more


async def test_overlap_queue_runs_the_colliding_run_later_and_keeps_at_most_one_waiting(api):
    slow = canvas(
        [node("start", "start"), node("slow", "test_sleep", data={"seconds": SLOW_S})],
        [("start", "slow")],
        name=f"queued-{uuid.uuid4().hex[:6]}",
    )
    workflow_id = await create(api, slow)
    created = await api.post(
        f"/api/workflows/{workflow_id}/schedules", json={"interval_s": INTERVAL_S, "overlap": "queue"}
    )
    assert created.status_code == 201 and created.json()["overlap"] == "queue", created.text
    deployment = await deployment_id(api, workflow_id)
    async with get_client() as client:
        found = await client.read_deployment(deployment)
        assert found.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE

        async def waited_then_ran_and_one_dropped():
            runs = await flow_runs(deployment)
            dropped = [
                r for r in runs if r.state and r.state.is_cancelled() and "at most one waits" in (r.state.message or "")
            ]
            for run in (r for r in runs if r.state and r.state.is_completed()):
                names = [s.name for s in await client.read_flow_run_states(run.id)]
                if "AwaitingConcurrencySlot" in names and dropped:
                    return run, dropped
            return None

        queued, dropped = await until(
            waited_then_ran_and_one_dropped, "a run queued then ran, and one beyond the queue dropped", 180
        )
    assert all(r.run_count == 0 for r in dropped)
    ran = sorted((r for r in await flow_runs(deployment) if r.run_count), key=lambda r: r.start_time)
    for first, second in zip(ran, ran[1:]):  # never two at once
        assert first.end_time is not None and first.end_time <= second.start_time, (first, second)
    assert (await api.delete(f"/api/workflows/{workflow_id}/schedules/{created.json()['id']}")).status_code == 204


async def test_a_schedule_paused_or_edited_in_prefect_is_reported_so(api):
    workflow_id = await create(api, hello())
    created = (
        await api.post(
            f"/api/workflows/{workflow_id}/schedules",
            json={"cron": "*/5 * * * *", "inputs": {"who": "x"}, "overlap": "queue"},
        )
    ).json()
    deployment = await deployment_id(api, workflow_id)
    # As the Prefect UI's pause toggle does it (prefect/server/ui: updateDeploymentSchedule
    # with the schedule's slug, schedule and parameters): a PATCH on Prefect's REST API.
    async with httpx.AsyncClient(base_url=os.environ["PREFECT_API_URL"], timeout=30) as prefect:
        url = f"/deployments/{deployment}/schedules/{created['id']}"
        current = next(
            s
            for s in (await prefect_rest(prefect, "GET", f"/deployments/{deployment}/schedules")).json()
            if s["id"] == created["id"]
        )
        answer = await prefect_rest(
            prefect,
            "PATCH",
            url,
            json={
                "slug": current["slug"],
                "schedule": current["schedule"],
                "parameters": current["parameters"],
                "active": False,
            },
        )
        assert answer.status_code == 204, answer.text
        listed = (await api.get(f"/api/workflows/{workflow_id}/schedules")).json()
        assert [(s["id"], s["active"], s["inputs"], s["next_runs"]) for s in listed] == [
            (created["id"], False, {"who": "x"}, [])
        ]
        # Edited there (as the UI's schedule form does): ours reports the new timing.
        answer = await prefect_rest(
            prefect,
            "PATCH",
            url,
            json={
                "schedule": {"cron": "0 12 * * *", "timezone": "Asia/Tokyo"},
                "parameters": {"inputs": {"who": "from the UI"}},
                "active": True,
            },
        )
        assert answer.status_code == 204, answer.text
    listed = (await api.get(f"/api/workflows/{workflow_id}/schedules")).json()
    assert [(s["id"], s["active"], s["cron"], s["timezone"], s["inputs"], s["overlap"]) for s in listed] == [
        (created["id"], True, "0 12 * * *", "Asia/Tokyo", {"who": "from the UI"}, "queue")
    ]
    assert datetime.fromisoformat(listed[0]["next_runs"][0]).utcoffset().total_seconds() == 9 * 3600
    # Paused through ours, the inputs stay (Prefect's PATCH alone would reset them).
    paused = await api.patch(f"/api/workflows/{workflow_id}/schedules/{created['id']}", json={"active": False})
    assert (paused.json()["active"], paused.json()["inputs"]) == (False, {"who": "from the UI"})


async def test_a_new_version_keeps_the_schedules_and_warns_about_inputs_that_no_longer_fit(api):
    name = f"versions-{uuid.uuid4().hex[:6]}"
    workflow_id = await create(api, hello(name))
    sid = (
        await api.post(
            f"/api/workflows/{workflow_id}/schedules",
            json={"cron": "0 3 * * *", "inputs": {"who": "x"}, "overlap": "skip"},
        )
    ).json()["id"]
    changed = hello(name)  # a new version (an identical canvas would be the same one) with the same inputs
    changed["nodes"][1]["data"]["output"] = "Hi {{ inputs.who }}"
    same_inputs = await api.put(f"/api/workflows/{workflow_id}", json={"canvas": changed})
    assert same_inputs.status_code == 200 and same_inputs.json()["warnings"] == [], same_inputs.text
    assert same_inputs.json()["version"] == 2
    other_inputs = await api.put(f"/api/workflows/{workflow_id}", json={"canvas": hello(name, input_name="person")})
    assert other_inputs.status_code == 200
    warnings = [w for w in other_inputs.json()["warnings"] if w["code"] == "schedule_inputs_invalid"]
    assert len(warnings) == 1 and sid in warnings[0]["message"] and "person" in warnings[0]["message"]
    assert [s["id"] for s in (await api.get(f"/api/workflows/{workflow_id}/schedules")).json()] == [sid]
    # Renamed: a new deployment, named after the workflow; the schedules move to it.
    renamed = await api.put(f"/api/workflows/{workflow_id}", json={"canvas": hello(name + "-b", input_name="person")})
    assert renamed.status_code == 200
    moved = (await api.get(f"/api/workflows/{workflow_id}/schedules")).json()
    assert [(s["cron"], s["inputs"], s["overlap"]) for s in moved] == [("0 3 * * *", {"who": "x"}, "skip")]
    async with get_client() as client:  # the old name's deployment is gone
        with pytest.raises(ObjectNotFound):
            await client.read_deployment_by_name(f"flowmaestro/{deployment_name(workflow_id, name)}")


async def test_invalid_schedule_requests_are_precise_4xx(api):
    workflow_id = await create(api, hello())
    url = f"/api/workflows/{workflow_id}/schedules"
    cases = [
        ({"inputs": {"who": "x"}}, "schedule", "exactly one"),
        ({"cron": "* * * * *", "interval_s": 60, "inputs": {"who": "x"}}, "schedule", "only one"),
        ({"interval_s": 5, "inputs": {"who": "x"}}, "interval_s", "below 10"),
        ({"interval_s": 1e20, "inputs": {"who": "x"}}, "interval_s", "not between"),
        ({"cron": "61 * * * *", "inputs": {"who": "x"}}, "cron", "Invalid cron"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus", "inputs": {"who": "x"}}, "timezone", "Invalid timezone"),
        ({"rrule": "NOT A RULE", "inputs": {"who": "x"}}, "rrule", "Invalid RRule"),
        ({"cron": "* * * * *", "inputs": {}}, "inputs.who", "required"),
        ({"cron": "* * * * *", "inputs": {"who": 5}}, "inputs.who", ""),
        ({"cron": "* * * * *", "inputs": {"who": "x"}, "overlap": "sometimes"}, "body.overlap", ""),
        ({"cron": "* * * * *", "inputs": {"who": "x"}, "every": "day"}, "body.every", ""),
        ({"cron": 5, "inputs": {"who": "x"}}, "body.cron", ""),
    ]
    for body, field, words in cases:
        answer = await api.post(url, json=body)
        assert answer.status_code == 422, (body, answer.text)
        issues = answer.json()["issues"]
        assert any(i["field"] == field and words in i["message"] for i in issues), (body, issues)
    assert (await api.get(url)).json() == []  # nothing was created
    sid = (await api.post(url, json={"cron": "0 1 * * *", "inputs": {"who": "x"}})).json()["id"]
    assert (await api.patch(f"{url}/{sid}", json={"interval_s": 1})).status_code == 422
    assert (await api.patch(f"{url}/{sid}", json={"inputs": {"who": 1}})).json()["issues"][0]["field"] == "inputs.who"
    assert (await api.patch(f"{url}/{sid}", json={"timezone": "Nowhere/At_All"})).json()["issues"][0][
        "field"
    ] == "timezone"
    assert (await api.patch(f"{url}/not-a-schedule", json={"active": False})).status_code == 404
    assert (await api.delete(f"{url}/{uuid.uuid4()}")).status_code == 404
    assert (await api.get(url, headers=api.bob)).status_code == 404
    assert (await api.post(url, json={"cron": "0 1 * * *", "inputs": {"who": "x"}}, headers=api.bob)).status_code == 404
    assert (await api.delete(f"{url}/{sid}", headers=api.bob)).status_code == 404
    assert (await api.get("/api/workflows/nope/schedules")).status_code == 404
    changed = await api.patch(f"{url}/{sid}", json={"timezone": "America/New_York"})
    assert changed.status_code == 200 and (changed.json()["cron"], changed.json()["timezone"]) == (
        "0 1 * * *",
        "America/New_York",
    )
