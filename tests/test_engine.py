"""Engine semantics in-process (DirectRunner): what a run does, without Prefect."""

from __future__ import annotations

import asyncio
import json

import pytest

from flows.engine import Execution
from flows.large_outputs import REF, LargeOutputs, is_ref, is_reference
from tests.support import JOURNAL, canvas, compiled, make_registry, node


@pytest.fixture(autouse=True)
def _clean_journal():
    JOURNAL.clear()


async def run(raw, inputs=None, **kwargs):
    registry = make_registry()
    plan = compiled(raw, registry)
    execution = Execution(plan, registry, run_id="run-1", inputs=inputs or {}, **kwargs)
    events = []
    execution.bus.subscribe(events.append)
    record = await execution.run()
    return record.result(), events


def sleep(node_id, seconds=0.0, value=None, **fields):
    return node(node_id, "test_sleep", data={"seconds": seconds, "value": value}, **fields)


async def test_outputs_flow_through_templates_and_keep_types():
    raw = canvas(
        [
            node("start", "start"),
            node("double", data={"output": {"n": "{{ inputs.n * 2 }}", "text": "n={{ inputs.n }}"}}),
            node("end", "end", data={"output": "{{ double.n + 1 }}"}),
        ],
        [("start", "double"), ("double", "end")],
        inputs={"n": {"type": "integer", "required": True}},
    )
    result, _ = await run(raw, {"n": 20})
    assert result["status"] == "completed"
    assert result["output"] == 41
    assert result["nodes"]["double"]["output"] == {"n": 40, "text": "n=20"}


async def test_condition_routes_and_skips_the_other_branch():
    raw = canvas(
        [
            node("start", "start"),
            node("cond", "condition", data={"conditions": [{"id": "big", "expression": "inputs.n > 10"}]}),
            node("big"),
            node("small"),
        ],
        [("start", "cond"), ("cond", "big", "condition-big"), ("cond", "small", "else")],
    )
    result, events = await run(raw, {"n": 3})
    assert result["nodes"]["small"]["status"] == "completed"
    assert result["nodes"]["big"]["status"] == "skipped"
    assert result["nodes"]["cond"]["output"] == {"matched": []}
    assert [e.node_id for e in events if e.type == "node:skipped"] == ["big"]
    assert result["output"] == {"small": "small"}  # no end node: completed terminal nodes


async def test_condition_mode_all_fires_every_match():
    raw = canvas(
        [
            node(
                "cond",
                "condition",
                data={
                    "mode": "all",
                    "conditions": [
                        {"id": "a", "expression": "true"},
                        {"id": "b", "expression": "{{ 1 == 1 }}"},
                        {"id": "c", "expression": "false"},
                    ],
                },
            ),
            node("a"),
            node("b"),
            node("c"),
        ],
        [("cond", "a", "condition-a"), ("cond", "b", "condition-b"), ("cond", "c", "condition-c")],
    )
    result, _ = await run(raw)
    assert {n: r["status"] for n, r in result["nodes"].items()} == {
        "cond": "completed",
        "a": "completed",
        "b": "completed",
        "c": "skipped",
    }


async def test_edge_conditions_gate_edges():
    raw = canvas(
        [node("src", data={"output": {"status": 404}}), node("ok"), node("missing")],
        [
            {
                "id": "e1",
                "source": "src",
                "target": "ok",
                "data": {"condition": {"field": "{{ src.status }}", "operator": "lt", "value": 400}},
            },
            {
                "id": "e2",
                "source": "src",
                "target": "missing",
                "data": {"condition": {"field": "{{ src.status }}", "operator": "eq", "value": 404}},
            },
        ],
    )
    result, _ = await run(raw)
    assert result["nodes"]["ok"]["status"] == "skipped"
    assert result["nodes"]["missing"]["status"] == "completed"


async def test_a_broken_edge_condition_fails_its_node_and_the_run():
    raw = canvas(
        [node("src", data={"output": "text"}), node("next")],
        [
            {
                "id": "e1",
                "source": "src",
                "target": "next",
                "data": {"condition": {"field": "{{ src }}", "operator": "gt", "value": 3}},
            }
        ],
    )
    result, events = await run(raw)
    assert result["status"] == "failed"
    assert result["error"]["node_id"] == "src" and result["error"]["type"] == "ConditionError"
    assert result["nodes"]["src"]["status"] == "failed" and result["nodes"]["src"]["output"] is None
    assert result["nodes"]["next"]["status"] == "skipped"
    assert [e.type for e in events if e.node_id == "src"] == ["node:started", "node:completed", "node:error"]


async def test_merge_after_an_error_edge_joins_the_error_output():
    raw = canvas(
        [node("f", "test_flaky", data={"failures": 9, "retry_class": None}), node("ok"), node("m", "merge")],
        [("f", "m", "error"), ("ok", "m")],
    )
    result, _ = await run(raw)
    assert result["status"] == "completed"
    assert result["nodes"]["m"]["output"] == {
        "f": {"error": {"message": "attempt 1 failed", "type": "NodeError", "node_id": "f", "attempts": 1}},
        "ok": "ok",
    }


async def test_independent_nodes_overlap_in_time():
    raw = canvas([sleep("a", 0.3), sleep("b", 0.3), node("j", "merge")], [("a", "j"), ("b", "j")])
    result, _ = await run(raw)
    (a_start, a_end), (b_start, b_end) = JOURNAL.spans[("a", ())], JOURNAL.spans[("b", ())]
    assert b_start < a_end and a_start < b_end
    assert result["nodes"]["j"]["output"] == {"a": "a", "b": "b"}


async def test_max_concurrency_one_serializes():
    raw = canvas([sleep("a", 0.1), sleep("b", 0.1)], settings={"max_concurrency": 1})
    await run(raw)
    (a_start, a_end), (b_start, b_end) = sorted(JOURNAL.spans.values())
    assert b_start >= a_end


async def test_retries_until_success_and_reports_attempts():
    raw = canvas([node("f", "test_flaky", data={"failures": 2})])
    result, events = await run(raw)
    assert result["nodes"]["f"]["status"] == "completed"
    assert result["nodes"]["f"]["attempts"] == 3
    assert [c[2] for c in JOURNAL.calls] == [1, 2, 3]
    assert [e.data["attempt"] for e in events if e.type == "node:retrying"] == [1, 2]


async def test_errors_outside_retry_on_are_not_retried():
    raw = canvas([node("f", "test_flaky", data={"failures": 5, "retry_class": None})])
    result, _ = await run(raw)
    assert result["status"] == "failed"
    assert result["nodes"]["f"]["attempts"] == 1
    assert result["error"]["node_id"] == "f"


async def test_retry_policy_override_per_node():
    raw = canvas([node("f", "test_flaky", data={"failures": 3}, retry={"max_attempts": 2, "initial_delay_s": 0})])
    result, _ = await run(raw)
    assert result["nodes"]["f"]["status"] == "failed"
    assert result["nodes"]["f"]["attempts"] == 2


async def test_error_edge_catches_a_failure_and_the_run_goes_on():
    raw = canvas(
        [
            node("f", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("after"),
            node("handler", data={"output": "caught {{ f.error.message }}"}),
        ],
        [("f", "after"), ("f", "handler", "error")],
    )
    result, _ = await run(raw)
    assert result["status"] == "completed"
    assert result["nodes"]["f"]["status"] == "failed"
    assert result["nodes"]["after"]["status"] == "skipped"
    assert result["nodes"]["handler"]["output"] == "caught attempt 1 failed"


async def test_fail_fast_cancels_running_nodes_and_starts_nothing_new():
    raw = canvas(
        [node("boom", "test_flaky", data={"failures": 9, "retry_class": None}), sleep("slow", 5), node("after_slow")],
        [("slow", "after_slow")],
    )
    result, _ = await run(raw)
    assert result["status"] == "failed"
    assert result["nodes"]["slow"]["status"] == "cancelled"
    assert result["nodes"]["after_slow"]["status"] == "cancelled"
    assert ("slow", ()) not in JOURNAL.spans  # it never finished sleeping


async def test_continue_lets_other_branches_finish_and_lists_every_failure():
    raw = canvas(
        [
            node("bad1", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("bad2", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("after_bad"),
            sleep("good", 0.1),
            node("after_good"),
        ],
        [("bad1", "after_bad"), ("good", "after_good")],
        settings={"on_error": "continue"},
    )
    result, _ = await run(raw)
    assert result["status"] == "failed"
    assert result["nodes"]["after_bad"]["status"] == "skipped"
    assert result["nodes"]["after_good"]["status"] == "completed"
    assert sorted(f["node_id"] for f in result["error"]["failed_nodes"]) == ["bad1", "bad2"]


async def test_missing_reference_at_run_time_fails_the_node_with_the_field():
    raw = canvas([node("a", data={"output": {"x": 1}}), node("b", data={"output": "{{ a.nope }}"})], [("a", "b")])
    result, _ = await run(raw)
    assert result["nodes"]["b"]["status"] == "failed"
    assert "nope" in result["nodes"]["b"]["error"]["message"]
    assert result["nodes"]["b"]["error"]["type"] == "TemplateError"


async def test_skipped_upstream_reads_as_none():
    raw = canvas(
        [
            node("cond", "condition", data={"conditions": [{"id": "x", "expression": "false"}]}),
            node("maybe"),
            node("j", data={"output": "{{ maybe is none }}"}, join="any"),
            node("other"),
        ],
        [("cond", "maybe", "condition-x"), ("cond", "other", "else"), ("maybe", "j"), ("other", "j")],
    )
    result, _ = await run(raw)
    assert result["nodes"]["j"]["output"] is True


async def test_set_variable_is_seen_downstream():
    raw = canvas(
        [
            node("set", "set_variable", data={"name": "greeting", "value": "hi {{ inputs.who }}"}),
            node("use", data={"output": "{{ var.greeting }}!"}),
        ],
        [("set", "use")],
        variables={"greeting": "hello"},
    )
    result, _ = await run(raw, {"who": "Ada"})
    assert result["nodes"]["use"]["output"] == "hi Ada!"


async def test_document_output_mapping():
    raw = canvas(
        [node("a", data={"output": 1}), node("b", data={"output": 2})],
        [("a", "b")],
        output={"sum": "{{ a + b }}", "label": "a={{ a }}"},
    )
    result, _ = await run(raw)
    assert result["output"] == {"sum": 3, "label": "a=1"}


async def test_run_timeout_fails_the_run():
    raw = canvas([sleep("slow", 5)], settings={"timeout_s": 0.3})
    result, events = await run(raw)
    assert result["status"] == "failed"
    assert "time limit" in result["error"]["message"]
    assert events[-1].type == "execution:failed"


async def test_event_sequence_is_strictly_increasing_and_ordered_per_node():
    raw = canvas([node("a"), node("b")], [("a", "b")])
    _, events = await run(raw)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.type for e in events] == [
        "execution:started",
        "node:started",
        "node:completed",
        "node:started",
        "node:completed",
        "execution:completed",
    ]


async def test_cancelling_the_run_cancels_running_nodes():
    registry = make_registry()
    plan = compiled(canvas([sleep("slow", 5)]), registry)
    execution = Execution(plan, registry, run_id="r", inputs={})
    slow_started = asyncio.Event()
    execution.bus.subscribe(lambda e: slow_started.set() if (e.type, e.node_id) == ("node:started", "slow") else None)
    task = asyncio.create_task(execution.run())
    await asyncio.wait_for(slow_started.wait(), 60)  # cancelled while its node runs, not before
    assert execution.record.nodes["slow"].status == "running"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert execution.record.status == "cancelled"
    assert execution.record.nodes["slow"].status == "cancelled"


async def test_without_a_store_an_output_over_the_limit_is_left_out_of_its_event_and_kept_in_the_result():
    raw = canvas([node("big", data={"output": "{{ 'x' * 3000 }}"}), node("small", data={"output": "ok"})])
    record, events = await run(raw, large_outputs=LargeOutputs("run-1", 2048))
    completed = {e.node_id: e.data["output"] for e in events if e.type == "node:completed"}
    assert completed["small"] == "ok"
    assert completed["big"] == {"truncated": True, "bytes": 3002, "preview": '"' + "x" * 199}  # with its quotes
    assert record["nodes"]["big"]["output"] == "x" * 3000


class KeptOutputs:
    """A store in memory: what ``LargeOutputs`` was given to keep, by ref."""

    def __init__(self, fail: bool = False):
        self.paths: dict[str, bytes] = {}
        self.fail = fail

    async def keep(self, ref: str, content: bytes) -> None:
        if self.fail:
            raise OSError("the store is down")
        self.paths[ref] = content


async def test_an_output_over_the_limit_is_kept_in_the_store_and_referred_to_in_events_and_the_result():
    raw = canvas(
        [
            node("big", data={"output": "{{ ['é' * 2000, 7] }}"}),
            node("size", data={"output": "{{ big[0] | length }}"}),
            node("repeat", "loop", data={"mode": "for", "count": 2, "max_iterations": 2}),
            node("inner", parentId="repeat", data={"output": "{{ 'y' * 3000 }}"}),
        ],
        [("big", "size")],
        output="{{ big }}",
    )
    storage = KeptOutputs()
    record, events = await run(raw, large_outputs=LargeOutputs("run-1", 2048, storage.keep))
    shown = {(e.node_id, tuple(e.path)): e.data["output"] for e in events if e.type == "node:completed"}
    big = shown[("big", ())]
    assert big["truncated"] is True and big["bytes"] == len(json.dumps(["é" * 2000, 7]).encode())
    assert REF.fullmatch(big["ref"]) and big["preview"] == json.dumps(["é" * 2000, 7])[:200]
    assert json.loads(storage.paths[big["ref"]]) == ["é" * 2000, 7]
    assert record["nodes"]["big"]["output"] == big  # the run result refers to it too
    assert shown[("size", ())] == record["nodes"]["size"]["output"] == 2000  # templates read it whole
    inner = [shown[("inner", (i,))] for i in (0, 1)]
    assert all(is_reference(o) for o in inner) and json.loads(storage.paths[inner[1]["ref"]]) == "y" * 3000
    repeat = shown[("repeat", ())]  # the loop's results (2 x 3,000 characters) too
    assert record["nodes"]["repeat"]["output"] == repeat and is_reference(repeat)
    assert record["output"] == ["é" * 2000, 7]  # the run's answer stays whole in the result...
    [final] = [e.data["output"] for e in events if e.type == "execution:completed"]
    assert is_reference(final)  # ...not in its event
    # every reference names its own copy, and nothing else was written
    refs = [o["ref"] for o in (big, *inner, repeat, final)]
    assert set(storage.paths) == set(refs) and len(set(refs)) == 5


async def test_when_the_store_fails_the_run_goes_on_and_the_result_keeps_the_output():
    raw = canvas([node("big", data={"output": "{{ 'x' * 3000 }}"})])
    record, events = await run(raw, large_outputs=LargeOutputs("run-1", 2048, KeptOutputs(fail=True).keep))
    [completed] = [e.data["output"] for e in events if e.type == "node:completed"]
    assert record["status"] == "completed" and "ref" not in completed and completed["bytes"] == 3002
    assert record["nodes"]["big"]["output"] == "x" * 3000


async def test_the_limit_counts_bytes_of_json_so_400_accented_characters_are_over_2048():
    raw = canvas([node("accents", data={"output": "{{ 'é' * 400 }}"})])  # 400 characters, 2,402 bytes of JSON
    record, events = await run(raw, large_outputs=LargeOutputs("run-1", 2048))
    [completed] = [e.data["output"] for e in events if e.type == "node:completed"]
    assert completed["truncated"] is True and completed["bytes"] == 2402


def test_an_output_reference_is_nothing_but_32_hex_digits():
    assert is_ref("0" * 32)
    for bad in ("../../etc/passwd", "0" * 31, "G" * 32, "0" * 32 + "/x", ""):
        assert not is_ref(bad)


async def test_body_executions_keep_no_output_once_their_iteration_is_over():
    raw = canvas(
        [
            node("repeat", "loop", data={"mode": "for", "count": 3, "max_iterations": 3}),
            node("big", parentId="repeat", data={"output": "{{ 'x' * 100 ~ loop.index }}"}),
            node("size", parentId="repeat", data={"output": "{{ big | length }}"}),
        ],
        [("big", "size")],
    )
    registry = make_registry()
    record = await Execution(compiled(raw, registry), registry, run_id="run-1", inputs={}).run()
    assert record.nodes["repeat"].output["results"] == [101, 101, 101]
    body_runs = [r for r in record.trace if r.node_id in ("big", "size")]
    assert len(body_runs) == 6 and all(r.status == "completed" and r.output is None for r in body_runs)


async def test_approvals_and_sub_workflows_are_handlers_using_the_runs_capabilities():
    from node_handlers.base import Completed

    seen = {}

    class Gate:  # the run's approval gate, as the approval handler reaches it
        async def wait(self, execution, node, frame, config):
            seen["status while waiting"] = execution.record.nodes[node.id].status
            seen["message"] = config.message
            return Completed(output={"approved": True}, handles=frozenset({"approved"}))

    class Children:  # the run's sub-workflows, as the subworkflow handler reaches them
        async def run(self, execution, node, child, journal=None):
            seen["child"] = (child.workflow, child.version, child.inputs, journal)
            return Completed(output={"child": "done"})

    raw = canvas(
        [
            node("ask", "approval", data={"message": "ship {{ inputs.what }}?"}),
            node("sub", "subworkflow", data={"workflow": "wf-2", "version": 3, "inputs": {"x": "{{ ask.approved }}"}}),
            node("no", data={"output": "rejected"}),
        ],
        [("ask", "sub", "approved"), ("ask", "no", "rejected")],
    )
    result, _ = await run(raw, {"what": "it"}, approvals=Gate(), subworkflows=Children())
    assert result["status"] == "completed"
    assert seen == {
        "status while waiting": "paused",
        "message": "ship it?",
        "child": ("wf-2", 3, {"x": True}, "run-1:sub:"),
    }
    assert result["nodes"]["sub"]["output"] == {"child": "done"} and result["nodes"]["no"]["status"] == "skipped"
    assert result["nodes"]["ask"]["attempts"] == result["nodes"]["sub"]["attempts"] == 1


async def test_without_a_run_to_pause_or_start_children_those_nodes_fail_saying_so():
    raw = canvas(
        [node("ask", "approval"), node("sub", "subworkflow", data={"workflow": "x"})], settings={"on_error": "continue"}
    )
    result, _ = await run(raw)
    assert result["status"] == "failed"
    assert "need a Prefect flow run to pause" in result["nodes"]["ask"]["error"]["message"]
    assert "only inside a Prefect flow run" in result["nodes"]["sub"]["error"]["message"]
