"""What the engine shows where its runner shows runs (Prefect's task runs and logs): every
node execution once, with the task runs it depends on and the container it ran in, a log
line each, and a summary instead of one by one past the run's limit.

Engine-level tests use a runner that keeps what it is given; the last test checks the same
on a real Prefect server, from the task runs and logs Prefect has.
"""

from __future__ import annotations

from collections import Counter

import pytest
from prefect.client.orchestration import get_client

from flows.calls import DirectRunner, MirroredRun
from flows.engine import Execution
from node_handlers.registry import build_registry
from tests.support import canvas, compiled, node, task_runs_of


class KeepingRunner(DirectRunner):
    """Runs handlers in-process and keeps what the engine records and logs."""

    recording = True

    def __init__(self) -> None:
        self.records: list[MirroredRun] = []
        self.logs: list[tuple[str, str | None, bool]] = []

    def record(self, entry: MirroredRun) -> None:
        self.records.append(entry)

    def log(self, line: str, *, task_run_id: str | None, failed: bool) -> None:
        self.logs.append((line, task_run_id, failed))

    def final(self) -> dict[str, MirroredRun]:
        """The last record of each task run (containers and delays report Running first)."""
        return {r.task_run_id: r for r in self.records if r.ended is not None}


async def execute(raw, runner: KeepingRunner, **options):
    plan = compiled(raw, build_registry())
    record = await Execution(plan, build_registry(), run_id="r", inputs={}, runner=runner, **options).run()
    assert record.status == "completed", record.error
    return record


def loop_canvas(iterations: int) -> dict:
    return canvas(
        [
            node("start", "start"),
            node("repeat", "loop", data={"mode": "for", "count": iterations, "max_iterations": 100_000}),
            node("a", "transform", parentId="repeat", data={"output": "{{ loop.index }}"}),
            node("b", "transform", parentId="repeat", data={"output": "{{ a }}"}),
            node("done", "transform", data={"output": "{{ repeat.results }}"}),
        ],
        [("start", "repeat"), ("a", "b"), ("repeat", "done")],
    )


async def test_each_execution_is_recorded_once_with_its_upstream_and_its_container():
    runner = KeepingRunner()
    await execute(loop_canvas(3), runner)
    final = runner.final()
    by_name = {r.name: r for r in final.values()}
    assert sorted(by_name) == [
        "a [1/3]",
        "a [2/3]",
        "a [3/3]",
        "b [1/3]",
        "b [2/3]",
        "b [3/3]",
        "done",
        "repeat",
        "start",
    ]
    repeat = by_name["repeat"]
    assert repeat.upstream == (by_name["start"].task_run_id,)
    assert by_name["done"].upstream == (repeat.task_run_id,)
    for i in (1, 2, 3):
        a, b = by_name[f"a [{i}/3]"], by_name[f"b [{i}/3]"]
        assert a.parent == b.parent == repeat.task_run_id
        assert a.upstream == () and b.upstream == (a.task_run_id,)
    # the container reported Running when it started, before any of its bodies
    running = [r for r in runner.records if r.ended is None]
    assert [r.name for r in running] == ["repeat"]
    assert runner.records.index(running[0]) < min(runner.records.index(by_name[f"a [{i}/3]"]) for i in (1, 2, 3))
    # one log line per execution, attached to its task run
    assert Counter(task_run for _, task_run, _ in runner.logs) == Counter(final.keys())
    assert any(line.startswith("b [2/3] (transform) completed in ") for line, _, _ in runner.logs)


async def test_a_delay_runs_inline_and_shows_running_while_it_waits():
    runner = KeepingRunner()
    raw = canvas([node("start", "start"), node("wait", "delay", data={"seconds": 0.05})], [("start", "wait")])
    record = await execute(raw, runner)
    assert record.nodes["wait"].output["waited_s"] >= 0.05
    waits = [r for r in runner.records if r.node.id == "wait"]
    assert [r.ended is None for r in waits] == [True, False]
    assert waits[0].task_run_id == waits[1].task_run_id


async def test_past_the_limit_body_nodes_are_summarised_per_node_and_top_level_nodes_still_shown():
    runner = KeepingRunner()
    await execute(loop_canvas(10), runner, max_task_runs=6)
    final = runner.final()
    names = sorted(r.name for r in final.values())
    # start and repeat, then a and b of the first two iterations; the limit is reached
    assert names == [
        "a [1/10]",
        "a [2/10]",
        "a [8 more]",
        "b [1/10]",
        "b [2/10]",
        "b [8 more]",
        "done",
        "repeat",
        "start",
    ]
    summaries = [r for r in final.values() if "more]" in r.name]
    repeat = next(r for r in final.values() if r.name == "repeat")
    assert all(r.parent == repeat.task_run_id and r.error is None for r in summaries)
    summary_logs = [line for line, _, _ in runner.logs if "not shown one by one" in line]
    assert sorted(summary_logs) == [
        "a [8 more] (transform): 8 executions not shown one by one: 8 completed, 0 failed",
        "b [8 more] (transform): 8 executions not shown one by one: 8 completed, 0 failed",
    ]
    # no log line for an execution that has no task run of its own
    assert all(task_run is not None for _, task_run, _ in runner.logs)


async def test_nested_containers_past_the_limit_count_into_the_outer_summary():
    runner = KeepingRunner()
    raw = canvas(
        [
            node("outer", "loop", data={"mode": "for", "count": 4, "max_iterations": 10}),
            node("inner", "loop", parentId="outer", data={"mode": "for", "count": 3, "max_iterations": 10}),
            node("x", "transform", parentId="inner", data={"output": 1}),
        ]
    )
    await execute(raw, runner, max_task_runs=3)
    names = sorted(r.name for r in runner.final().values())
    # outer, the first inner and its first x; then everything else is counted
    assert names == ["inner [1/4]", "inner [3 more]", "outer", "x [1/4 / 1/3]", "x [1/4 / 2 more]", "x [9 more]"]


async def node_logs_of(flow_run_id: str) -> list[dict]:
    async with get_client() as client:
        logs: list[dict] = []
        while True:
            page = (
                await client.request(
                    "POST",
                    "/logs/filter",
                    json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(logs)},
                )
            ).json()
            logs += page
            if len(page) < 200:
                return [entry for entry in logs if entry["name"] == "flowmaestro.node"]


@pytest.mark.prefect
@pytest.mark.usefixtures("prefect_server")
async def test_a_1000_iteration_loop_has_exactly_its_task_runs_with_their_inputs_and_log_lines(run_context):
    from flows.flow import workflow_flow

    state = await workflow_flow(run_context)(canvas=loop_canvas(1000), inputs={}, return_state=True)
    result = await state.result()
    assert len(result["nodes"]["done"]["output"]) == 1000
    await run_context.task_run_sender.close()  # what the process sends when it is done
    flow_run_id = str(state.state_details.flow_run_id)
    runs = await task_runs_of(flow_run_id, 2003)
    names = Counter(run.name.split(" [")[0] for run in runs)
    assert names == {"start": 1, "repeat": 1, "a": 1000, "b": 1000, "done": 1}
    assert {run.state_type.value for run in runs} == {"COMPLETED"}
    by_name = {run.name: run for run in runs}
    assert len(by_name) == 2003  # each execution once
    ids = {name: str(run.id) for name, run in by_name.items()}

    def inputs(name: str, key: str) -> list[str]:
        return [str(i.id) for i in by_name[name].task_inputs.get(key, [])]

    assert inputs("repeat", "upstream") == [ids["start"]]
    assert inputs("done", "upstream") == [ids["repeat"]]
    for i in (1, 500, 1000):
        assert inputs(f"b [{i}/1000]", "upstream") == [ids[f"a [{i}/1000]"]]
        assert inputs(f"a [{i}/1000]", "__parents__") == inputs(f"b [{i}/1000]", "__parents__") == [ids["repeat"]]
    logs = await node_logs_of(flow_run_id)
    assert Counter(entry["task_run_id"] for entry in logs) == Counter(ids.values())
    line = next(entry["message"] for entry in logs if entry["task_run_id"] == ids["b [7/1000]"])
    assert line.startswith("b [7/1000] (transform) completed in ") and line.endswith(", 1 attempt")
