"""The run's phases (flows/flow.py) in their pure parts, without Prefect: the run's first
start, refusals recorded like any run, and plans compiled once per saved version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prefect.states import Crashed, Running

from builder.plan_cache import PlanCache
from flows.engine import Execution
from flows.flow import _compile, first_start
from flows.records import RunRecord
from flows.settings import EngineSettings
from tests.support import canvas, compiled, make_registry, node

FIRST = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_the_first_start_is_prefects_start_time_which_every_execution_of_the_run_sees():
    again = SimpleNamespace(start_time=FIRST, state=Running())  # executed again: Prefect kept its first start
    assert first_start(again, None) == FIRST


def test_before_prefect_reports_a_start_time_it_is_the_running_state_just_entered():
    running = Running()
    first = SimpleNamespace(start_time=None, state=running)
    assert first_start(first, None) == running.timestamp


def test_a_child_run_is_given_its_parents_first_start():
    child = SimpleNamespace(start_time=FIRST + timedelta(hours=1), state=Running())
    assert first_start(child, FIRST.isoformat()) == FIRST


def test_outside_a_flow_run_the_run_starts_now():
    before = datetime.now(UTC)
    assert before <= first_start(None, None) <= datetime.now(UTC)
    not_running = SimpleNamespace(start_time=None, state=Crashed())
    assert before <= first_start(not_running, None)


async def test_templates_read_the_runs_first_start_not_this_executions():
    registry = make_registry()
    raw = canvas([node("start", "start"), node("stamp", data={"output": "{{ run.started_at }}"})], [("start", "stamp")])
    record = await Execution(compiled(raw, registry), registry, run_id="r", inputs={}, started_at=FIRST).run()
    assert record.nodes["stamp"].output == FIRST.isoformat()
    assert record.started_at is not None and record.started_at > FIRST  # this execution's own clock


async def test_without_a_first_start_templates_read_this_executions_start():
    registry = make_registry()
    raw = canvas([node("start", "start"), node("stamp", data={"output": "{{ run.started_at }}"})], [("start", "stamp")])
    record = await Execution(compiled(raw, registry), registry, run_id="r", inputs={}).run()
    assert record.started_at is not None and record.nodes["stamp"].output == record.started_at.isoformat()


def test_a_refused_run_is_a_run_record_like_any_other():
    record = RunRecord.refused(
        "run-1",
        "greeter",
        "invalid inputs",
        [{"message": "who: required", "code": "required"}, {"message": "n: not a number"}],
        workflow_id="wf",
        version=3,
    )
    result = record.result()
    assert result["status"] == "failed" and result["output"] is None
    assert result["error"] == {
        "message": "invalid inputs: who: required; n: not a number",
        "type": "invalid_inputs",
        "issues": [{"message": "who: required", "code": "required"}, {"message": "n: not a number"}],
    }
    assert (result["id"], result["workflow"], result["workflow_id"], result["version"]) == ("run-1", "greeter", "wf", 3)
    assert result["nodes"] == {} and result["trace"] == []
    assert result["started_at"] == result["ended_at"] is not None


def _context(plans: PlanCache | None) -> SimpleNamespace:
    return SimpleNamespace(plans=plans, registry=make_registry(), settings=EngineSettings())


RAW = canvas([node("start", "start"), node("greet", data={"output": "hi"})], [("start", "greet")])


def test_a_saved_version_is_compiled_once_by_a_context_that_keeps_plans():
    context = _context(PlanCache(1000))
    first = _compile(context, RAW, ("wf", 1))
    assert _compile(context, {"not": "even a canvas"}, ("wf", 1)) is first  # versions never change
    assert _compile(context, RAW, ("wf", 2)) is not first
    assert len(context.plans) == 2


def test_a_canvas_given_inline_is_compiled_every_time():
    context = _context(PlanCache(1000))
    assert _compile(context, RAW, None) is not _compile(context, RAW, None)
    assert len(context.plans) == 0
    no_cache = _context(None)
    assert _compile(no_cache, RAW, ("wf", 1)) is not _compile(no_cache, RAW, ("wf", 1))


def test_an_invalid_saved_version_is_not_kept_and_answers_its_issues():
    context = _context(PlanCache(1000))
    issues = _compile(context, canvas([node("x", "no_such_type")]), ("wf", 1))
    assert isinstance(issues, list) and issues and all("message" in issue for issue in issues)
    assert len(context.plans) == 0
