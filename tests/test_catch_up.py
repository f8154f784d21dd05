"""Which missed scheduled runs a worker starts (deployments/catch_up.py), and what a
scheduled run records as its trigger (flows/flow.py), on flow runs shaped like Prefect's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from deployments.catch_up import missed_to_skip, schedule_of
from flows.flow import _trigger_of

NOW = datetime(2027, 3, 28, 12, 0, tzinfo=UTC)
LATE = timedelta(seconds=60)
DEPLOYMENT = "0f9d1c9e-0000-4000-8000-000000000001"


def run(name: str, minutes_ago: float, schedule: str | None = "s1") -> SimpleNamespace:
    when = NOW - timedelta(minutes=minutes_ago)
    # Prefect's scheduler: f"scheduled {deployment.id} {deployment_schedule.id} {date}", the
    # date as str() prints it, with a space.
    key = f"scheduled {DEPLOYMENT} {schedule} {when}" if schedule else f"api:owner:{name}"
    return SimpleNamespace(
        name=name,
        auto_scheduled=schedule is not None,
        idempotency_key=key,
        expected_start_time=when,
        parent_task_run_id=None,
        state=SimpleNamespace(state_details=SimpleNamespace(scheduled_time=when)),
    )


def names(runs) -> list[str]:
    return sorted(r.name for r in runs)


def test_latest_starts_only_the_last_missed_run_of_each_schedule():
    due = [
        run("a1", 180),
        run("a2", 120),
        run("a3", 60),
        run("b1", 90, "s2"),
        run("b2", 30, "s2"),
        run("on-time", 0.2),
        run("by-hand", 500, schedule=None),
    ]
    assert names(missed_to_skip(due, NOW, "latest", LATE)) == ["a1", "a2", "b1"]


def test_none_starts_no_missed_run_and_all_starts_every_one():
    due = [run("a1", 180), run("a2", 2), run("on-time", 0.5), run("by-hand", 500, schedule=None)]
    assert names(missed_to_skip(due, NOW, "none", LATE)) == ["a1", "a2"]
    assert missed_to_skip(due, NOW, "all", LATE) == []


def test_a_run_queued_by_prefect_is_not_missed():
    # ENQUEUE: Prefect moves a colliding run back to Scheduled with a new scheduled time;
    # its expected start time stays the original one.
    queued = run("queued", 30)
    queued.state.state_details.scheduled_time = NOW - timedelta(seconds=5)
    assert names(missed_to_skip([queued, run("a", 20)], NOW, "none", LATE)) == ["a"]


def test_a_scheduled_run_records_its_schedule_as_its_trigger():
    scheduled = run("a", 1, "5c1e1d4e-0000-4000-8000-000000000002")
    assert schedule_of(scheduled) == "5c1e1d4e-0000-4000-8000-000000000002"
    assert _trigger_of(scheduled) == {"type": "schedule", "schedule_id": "5c1e1d4e-0000-4000-8000-000000000002"}
    assert _trigger_of(run("b", 1, schedule=None)) == {"type": "prefect-ui"}
    assert schedule_of(run("b", 1, schedule=None)) is None


def test_a_run_that_already_started_is_never_a_missed_one():
    # A scheduled run released on a long delay comes back Scheduled for the delay's end; if
    # no worker was up then, it is late, but it is a run under way, not a missed start.
    delayed = run("delayed", 30)
    delayed.run_count = 1
    assert names(missed_to_skip([delayed, run("a", 20)], NOW, "none", LATE)) == ["a"]
