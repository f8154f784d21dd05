"""The run journal in the engine (no Prefect): a run executed again restores what an earlier
execution completed, runs the rest, and keeps its dead letters; plus the store's journal
table on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

import pytest

from builder.catalog import NodeConfig
from flows.engine import Execution
from flows.journal import RunJournal
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler
from store.queries import NodeOutcome
from tests.support import JOURNAL, canvas, compiled, make_registry, node


class MemoryOutcomes:
    """An ``OutcomeStore`` in memory, counting writes."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[str, tuple[int, ...]], NodeOutcome]] = {}
        self.writes = 0

    async def outcomes(self, journal_id: str) -> list[NodeOutcome]:
        return list(self.rows.get(journal_id, {}).values())

    async def save_outcomes(self, journal_id: str, outcomes: Sequence[NodeOutcome], *, workflow_id, owner) -> None:
        self.writes += 1
        for o in outcomes:
            self.rows.setdefault(journal_id, {})[(o.node_id, o.path)] = o


@pytest.fixture(autouse=True)
def _clean():
    JOURNAL.clear()


async def execute(raw, store, inputs=None):
    """One execution of run ``run-1`` with its journal in ``store``."""
    registry = make_registry()
    journal = await RunJournal.open("run-1", store)
    execution = Execution(compiled(raw, registry), registry, run_id="run-1", inputs=inputs or {}, journal=journal)
    events = []
    execution.bus.subscribe(events.append)
    record = await execution.run()
    await journal.flush()
    return record.result(), events


def count(node_id, value=None, **fields):
    return node(node_id, "test_count", data={"value": value or node_id}, **fields)


def calls_of(node_id):
    return [c for c in JOURNAL.calls if c[0] == node_id]


async def test_a_run_executed_again_restores_completed_nodes_and_runs_the_rest():
    raw = canvas(
        [count("a"), count("b"), node("boom", "test_flaky", data={"failures": 1, "retry_class": None}), count("after")],
        [("a", "b"), ("b", "boom"), ("boom", "after")],
    )
    store = MemoryOutcomes()
    first, _ = await execute(raw, store)
    assert first["status"] == "failed"
    assert [c[0] for c in JOURNAL.calls] == ["a", "b", "boom"]
    JOURNAL.clear()
    # Executed again (a retry): the flaky node's second attempt succeeds this time.
    raw["nodes"][2]["data"]["failures"] = 0
    second, events = await execute(raw, store)
    assert second["status"] == "completed"
    assert [c[0] for c in JOURNAL.calls] == ["boom", "after"]  # a and b restored, not called
    restored = [e.node_id for e in events if e.type == "node:completed" and e.data.get("restored")]
    assert restored == ["a", "b"]
    assert second["nodes"]["a"]["restored"] is True and second["nodes"]["after"]["restored"] is False
    assert second["nodes"]["b"]["output"] == {"value": "b", "called": True}


async def test_a_changed_configuration_runs_the_node_again():
    # b reads a's output, c does not: only what the change reaches runs again.
    raw = canvas([count("a", "one"), count("b", "{{ a.value }}!"), count("c")], [("a", "b"), ("b", "c")])
    store = MemoryOutcomes()
    await execute(raw, store)
    JOURNAL.clear()
    raw["nodes"][0]["data"]["value"] = "two"
    result, _ = await execute(raw, store)
    assert [c[0] for c in JOURNAL.calls] == ["a", "b"]
    assert result["nodes"]["b"]["output"]["value"] == "two!"
    assert result["nodes"]["c"]["restored"] is True


async def test_loop_iterations_and_variables_are_restored_per_path():
    raw = canvas(
        [
            node("set", "set_variable", data={"name": "who", "value": "Ada"}),
            node("lp", "loop", data={"mode": "for", "count": 3}),
            node("step", "test_count", parentId="lp", data={"value": "{{ var.who }} {{ loop.index }}"}),
            node("stop", "test_flaky", data={"failures": 1, "retry_class": None}),
        ],
        [("set", "lp"), ("lp", "stop")],
    )
    store = MemoryOutcomes()
    await execute(raw, store)
    assert len(calls_of("step")) == 3
    JOURNAL.clear()
    raw["nodes"][3]["data"]["failures"] = 0
    result, _ = await execute(raw, store)
    assert calls_of("step") == []
    assert [r["value"] for r in result["nodes"]["lp"]["output"]["results"]] == ["Ada 0", "Ada 1", "Ada 2"]
    assert result["status"] == "completed"


async def test_a_delay_executed_again_waits_only_what_is_left():
    raw = canvas([node("wait", "delay", data={"seconds": 2})])
    store = MemoryOutcomes()
    journal = await RunJournal.open("run-1", store)
    # The first execution started the delay 1.5 s ago and died.
    await journal.started("wait", (), _key_of(raw, "wait"))
    store.rows["run-1"][("wait", ())] = _shifted(store.rows["run-1"][("wait", ())], -1.5)
    started = time.monotonic()
    result, _ = await execute(raw, store)
    waited = time.monotonic() - started
    assert result["status"] == "completed"
    assert waited < 1.4, f"waited {waited:.2f} s of a 2 s delay that had 0.5 s left"
    assert result["nodes"]["wait"]["output"]["waited_s"] <= 0.7


async def test_failed_nodes_without_an_error_edge_are_dead_letters_with_secrets_redacted():
    raw = canvas(
        [
            node(
                "call",
                "test_flaky",
                data={"failures": 9, "retry_class": None, "value": {"api_key": "sk-123", "note": "x"}},
            ),
            node("caught", "test_flaky", data={"failures": 9, "retry_class": None}),
            count("fix"),
        ],
        [("caught", "fix", "error")],
        settings={"on_error": "continue"},
    )
    store = MemoryOutcomes()
    await execute(raw, store)
    rows = store.rows["run-1"]
    assert rows[("call", ())].status == "failed" and rows[("call", ())].dead_letter is True
    assert rows[("call", ())].outcome["config"]["value"] == {"api_key": "[redacted]", "note": "x"}
    assert rows[("caught", ())].dead_letter is False


async def test_pure_control_nodes_ride_along_with_the_next_durable_write():
    raw = canvas([node("t1"), node("t2"), count("side"), node("t3")], [("t1", "t2"), ("t2", "side"), ("side", "t3")])
    store = MemoryOutcomes()
    await execute(raw, store)
    # side's write carries t1 and t2; t3 is written when the run ends.
    assert store.writes == 2
    assert set(store.rows["run-1"]) == {("t1", ()), ("t2", ()), ("side", ()), ("t3", ())}


def _key_of(raw, node_id):
    from flows.policies import cache_key

    registry = make_registry()
    plan = compiled(raw, registry)
    planned = plan.nodes[node_id]
    handler = registry.handler(planned.type)
    return cache_key(planned, handler.Config.model_validate(planned.data), None)


def _shifted(entry: NodeOutcome, seconds: float) -> NodeOutcome:
    import dataclasses
    from datetime import timedelta

    return dataclasses.replace(entry, started_at=entry.started_at + timedelta(seconds=seconds))


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def test_the_store_keeps_and_replaces_outcomes(database, tmp_path):
    from store.db import make_engine, sessions, upgrade_schema
    from store.queries import NodeOutcomes
    from tests.processes import postgres_database

    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'journal.db'}"
        await _roundtrip(url, make_engine, sessions, upgrade_schema, NodeOutcomes)
    else:
        with postgres_database() as url:
            await _roundtrip(url, make_engine, sessions, upgrade_schema, NodeOutcomes)


async def _roundtrip(url, make_engine, sessions, upgrade_schema, NodeOutcomes):
    await upgrade_schema(url)
    engine = make_engine(url)
    try:
        table = NodeOutcomes(sessions(engine))
        failed = NodeOutcome(
            "n", (0, 2), "k1", "failed", {"error": {"message": "boom"}, "config": {}}, 3, dead_letter=True
        )
        await table.save(
            "run-x", [failed, NodeOutcome("m", (), "k2", "completed", {"output": 1})], workflow_id="wf", owner="alice"
        )
        [letter] = await table.dead_letters("alice")
        assert (letter.node_id, letter.path, letter.attempts) == ("n", (0, 2), 3)
        assert await table.dead_letters("bob") == []
        await table.save(
            "run-x", [NodeOutcome("n", (0, 2), "k1", "completed", {"output": 2})], workflow_id="wf", owner="alice"
        )
        rows = {(o.node_id, o.path): o for o in await table.of_run("run-x")}
        assert rows[("n", (0, 2))].status == "completed" and rows[("n", (0, 2))].outcome == {"output": 2}
        assert rows[("n", (0, 2))].started_at.tzinfo is not None
        assert await table.dead_letters("alice") == []
    finally:
        await engine.dispose()


async def test_a_node_with_replay_off_executes_again():
    raw = canvas(
        [
            count("a"),
            {**count("poll"), "replay": False},
            node("boom", "test_flaky", data={"failures": 1, "retry_class": None}),
        ],
        [("a", "poll"), ("poll", "boom")],
    )
    store = MemoryOutcomes()
    await execute(raw, store)
    JOURNAL.clear()
    raw["nodes"][2]["data"]["failures"] = 0
    result, _ = await execute(raw, store)
    assert [c[0] for c in JOURNAL.calls] == ["poll", "boom"]
    assert result["nodes"]["a"]["restored"] is True and result["nodes"]["poll"]["restored"] is False


def test_child_journal_ids_stay_within_the_stores_column():
    from types import SimpleNamespace

    registry = make_registry()
    plan = compiled(canvas([count("a")]), registry)
    execution = Execution(plan, registry, run_id="r", inputs={}, journal=RunJournal("x" * 190))
    frame = SimpleNamespace(path=(1, 2))
    long_id = execution.child_journal_id(SimpleNamespace(id="sub"), frame)
    assert len(long_id) <= 200 and long_id.startswith("x" * 36)
    assert long_id == execution.child_journal_id(SimpleNamespace(id="sub"), frame)  # stable
    short = Execution(plan, registry, run_id="r", inputs={}, journal=RunJournal("run-1"))
    assert short.child_journal_id(SimpleNamespace(id="sub"), frame) == "run-1:sub:1.2"


async def test_durable_writes_that_meet_share_one_transaction_and_a_failed_one_is_kept():
    import asyncio

    class SlowStore(MemoryOutcomes):
        def __init__(self):
            super().__init__()
            self.batches, self.fail = [], 0

        async def save_outcomes(self, journal_id, outcomes, *, workflow_id, owner):
            await asyncio.sleep(0.05)
            if self.fail:
                self.fail -= 1
                raise ConnectionError("database gone")
            self.batches.append([o.node_id for o in outcomes])
            await super().save_outcomes(journal_id, outcomes, workflow_id=workflow_id, owner=owner)

    from node_handlers.base import Completed

    store = SlowStore()
    journal = RunJournal("run-1", store=store)
    await asyncio.gather(
        *(journal.completed(f"n{i}", (), "k", Completed(output=i), 1, durable=True) for i in range(10))
    )
    assert sorted(name for batch in store.batches for name in batch) == sorted(f"n{i}" for i in range(10))
    assert len(store.batches) == 2  # the first alone, the nine that came during it together
    store.fail = 4  # every attempt of the next write fails: the entry stays buffered
    with pytest.raises(Exception, match="could not be written"):
        await journal.completed("late", (), "k", Completed(output=1), 1, durable=True)
    await journal.flush()
    assert ("late", ()) in store.rows["run-1"]


async def test_a_failure_whose_error_edge_does_not_fire_is_a_dead_letter():
    # Bug 2: one rule for "caught". The error edge's condition does not hold, so the failure
    # goes uncaught (the run fails) and the journal keeps it as a dead letter; the one whose
    # error edge fires is caught and is not.
    raw = canvas(
        [
            node("missed", "test_flaky", data={"failures": 9, "retry_class": None}),
            node("caught", "test_flaky", data={"failures": 9, "retry_class": None}),
            count("fix_missed"),
            count("fix_caught"),
        ],
        [
            {
                "id": "e1",
                "source": "missed",
                "target": "fix_missed",
                "sourceHandle": "error",
                "data": {"condition": {"field": "{{ missed.error.type }}", "operator": "eq", "value": "SomethingElse"}},
            },
            {
                "id": "e2",
                "source": "caught",
                "target": "fix_caught",
                "sourceHandle": "error",
                "data": {"condition": {"field": "{{ caught.error.type }}", "operator": "eq", "value": "NodeError"}},
            },
        ],
        settings={"on_error": "continue"},
    )
    store = MemoryOutcomes()
    result, _ = await execute(raw, store)
    assert result["status"] == "failed"
    assert [f["node_id"] for f in result["error"]["failed_nodes"]] == ["missed"]
    rows = store.rows["run-1"]
    assert rows[("missed", ())].status == "failed" and rows[("missed", ())].dead_letter is True
    assert rows[("caught", ())].status == "failed" and rows[("caught", ())].dead_letter is False


def test_the_journal_redacts_like_the_handlers_keys_and_tuples_included():
    # Bug 4: one redaction function for the journal and the handlers.
    from node_handlers.redaction import redact

    journal = RunJournal("run-1", secrets=["sk-abc", "sk-abc-long-tail"])
    value = {
        "message": "sent sk-abc-long-tail and sk-abc",
        "sk-abc-long-tail": 1,
        "pair": ("sk-abc", "x"),
        "headers": {"Authorization": "Bearer whatever"},
    }
    kept = journal.redact(value)
    text = repr(kept)
    assert "sk-abc" not in text and "long-tail" not in text and "whatever" not in text
    assert kept["message"] == "sent [redacted] and [redacted]"
    assert kept["headers"] == {"Authorization": "[redacted]"}
    assert redact("sent sk-abc-long-tail", ["sk-abc", "sk-abc-long-tail"]) == "sent [redacted]"


class StepsConfig(NodeConfig):
    fail_after: bool = False


class StepsHandler(NodeHandler):
    """Journals two sub-steps through its capabilities, then fails when told to."""

    type = "test_steps"
    Config = StepsConfig
    computed: ClassVar[list[str]] = []

    async def run(self, config: StepsConfig, ctx: NodeContext) -> Completed:
        async def turn(name: str):
            StepsHandler.computed.append(name)
            return {"said": name}

        first = await ctx.capabilities.journal_step("turn-1", lambda: turn("turn-1"))
        second = await ctx.capabilities.journal_step("turn-2", lambda: turn("turn-2"))
        if config.fail_after:
            raise NodeError("the tool call after the turns failed")
        return Completed(output=[first, second])


async def test_journaled_sub_steps_are_read_back_when_the_run_executes_again():
    registry = make_registry()
    registry.register(StepsHandler())
    raw = canvas([node("agent", "test_steps", data={"fail_after": True})])
    store = MemoryOutcomes()

    async def execute_once():
        journal = await RunJournal.open("run-1", store)
        execution = Execution(compiled(raw, registry), registry, run_id="run-1", inputs={}, journal=journal)
        result = (await execution.run()).result()
        await journal.flush()
        return result

    StepsHandler.computed = []
    assert (await execute_once())["status"] == "failed"
    assert StepsHandler.computed == ["turn-1", "turn-2"]
    assert store.rows["run-1"][("agent#turn-1", ())].outcome == {"output": {"said": "turn-1"}}
    StepsHandler.computed = []
    raw["nodes"][0]["data"]["fail_after"] = False  # a new configuration: the turns are computed again
    assert (await execute_once())["status"] == "completed"
    assert StepsHandler.computed == ["turn-1", "turn-2"]
    StepsHandler.computed = []
    store.rows["run-1"].pop(("agent", ()))  # the node's own completion lost (a crash just before it)
    result = await execute_once()
    assert result["status"] == "completed" and StepsHandler.computed == []
    assert result["nodes"]["agent"]["output"] == [{"said": "turn-1"}, {"said": "turn-2"}]


async def test_a_failure_the_store_cannot_take_stays_buffered_and_the_run_reports_the_node(monkeypatch):
    import flows.journal

    class DownStore(MemoryOutcomes):
        down = True

        async def save_outcomes(self, journal_id, outcomes, *, workflow_id, owner):
            if self.down:
                raise ConnectionError("database gone")
            await super().save_outcomes(journal_id, outcomes, workflow_id=workflow_id, owner=owner)

    monkeypatch.setattr(flows.journal, "MAX_BUFFERED", 1)  # the failure's buffered write is due at once
    registry = make_registry()
    store = DownStore()
    journal = RunJournal("run-1", store=store)
    raw = canvas([node("boom", "test_flaky", data={"failures": 9, "retry_class": None})])
    execution = Execution(compiled(raw, registry), registry, run_id="run-1", inputs={}, journal=journal)
    result = (await execution.run()).result()
    assert result["status"] == "failed" and result["error"]["node_id"] == "boom"
    store.down = False  # back: the next flush writes what stayed buffered
    await journal.flush()
    assert store.rows["run-1"][("boom", ())].dead_letter is True
