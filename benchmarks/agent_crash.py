"""What the agent node's durable steps cost and what they deliver.

Usage::

    python -m benchmarks.agent_crash [--turns 20] [--reps 7] [--database sqlite,postgresql]
                                     [--crash-trials 10] [--detect-s 15]

1. **The journal's overhead per turn**: one agent of ``--turns`` turns, each asking for one
   http tool call (a local server answering at once), then an answer, run in the engine in
   this process against a local model server; with the run's journal on a real store
   (every turn and every tool call written before the loop goes on: two durable writes a
   turn) and with a journal that keeps nothing (the same loop without it). Rounds
   interleaved; medians; overhead per turn = (journal - no journal) / turns.
2. **Crash trials** (tests/agent_crash.py, the harness of tests/test_agent_durability.py):
   a Prefect server on PostgreSQL, the API and worker processes; each trial SIGKILLs the
   worker while the agent's third tool call is in flight and starts a fresh worker; it
   checks that turns 1-3 were asked once, calls 1-2 sent once, call 3 at most twice with
   one Idempotency-Key, and that the output is an uncrashed run's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import _common

SERVER = _common.prepare_prefect()  # before prefect is imported

from deployments.run_store import SqlRunStore  # noqa: E402
from flows.engine import Execution  # noqa: E402
from flows.journal import OutcomeStore, RunJournal  # noqa: E402
from node_handlers.registry import build_registry  # noqa: E402
from store.db import upgrade_schema  # noqa: E402
from tests.agent_server import Call, Say, ToolModel, ToolServer, tool_model, tool_server  # noqa: E402
from tests.processes import postgres_database  # noqa: E402
from tests.support import compiled  # noqa: E402


def loop_canvas(model: ToolModel, tools: ToolServer, name: str) -> dict[str, Any]:
    tool = {"type": "http", "name": "step", "method": "POST", "url": tools.url + "/step/{{ args.n }}"}
    agent = {
        "id": "agent",
        "type": "agent",
        "data": {"model": name, "base_url": model.base_url, "prompt": "go", "tools": [tool], "max_turns": 200},
    }
    nodes = [
        {"id": "start", "type": "start", "data": {}},
        agent,
        {"id": "end", "type": "end", "data": {"output": "{{ agent.turns }}"}},
    ]
    edges = [{"id": "e0", "source": "start", "target": "agent"}, {"id": "e1", "source": "agent", "target": "end"}]
    return {"name": "agent-loop", "nodes": nodes, "edges": edges}


async def one_run(plan: Any, store: OutcomeStore | None) -> float:
    registry = build_registry()
    run_id = f"bench-{uuid.uuid4().hex}"
    journal = await RunJournal.open(run_id, store)
    execution = Execution(plan, registry, run_id=run_id, inputs={}, journal=journal)
    started = time.perf_counter()
    record = await execution.run()
    await journal.flush()
    elapsed = time.perf_counter() - started
    assert record.status == "completed", record.error
    return elapsed


async def journal_overhead(database: str, url: str, turns: int, reps: int) -> list[Any]:
    await upgrade_schema(url)
    store = SqlRunStore.from_url(url)
    name = f"loop-{turns}"
    try:
        with tool_model() as model, tool_server() as tools:
            model.script(name, *[Call((("step", {"n": n}),)) for n in range(1, turns + 1)], Say(("done",)))
            plan = compiled(loop_canvas(model, tools, name), build_registry())
            await one_run(plan, None)  # warm up: clients, connections, imports
            await one_run(plan, store)
            with_journal, without = [], []
            for _ in range(reps):
                with_journal.append(await one_run(plan, store))
                without.append(await one_run(plan, None))
    finally:
        await store.engine.dispose()
    on, off = statistics.median(with_journal), statistics.median(without)
    return [database, turns, f"{on * 1000:.0f}", f"{off * 1000:.0f}", f"{(on - off) * 1000 / turns:.2f}"]


async def crash_trials(trials: int, detect_s: float) -> int:
    from tests.agent_crash import (
        MODEL,
        SCRIPT,
        agent_crash_canvas,
        one_agent_crash_trial,
        problems_of,
        uncrashed_output,
    )
    from tests.crash_harness import KEY, client, save
    from tests.processes import prefect_on_postgres, stack_env, start_serve, start_worker

    home = Path(tempfile.mkdtemp(prefix="fm-bench-agent-"))
    print(f"\nagent crash trials: {trials}, FLOWMAESTRO_CRASH_DETECT_S={detect_s:g}; logs in {home}", flush=True)
    started: list[Any] = []
    failed = 0
    with (
        prefect_on_postgres(home / "prefect") as prefect,
        postgres_database("fm_bench_agent") as url,
        tool_model() as model,
        tool_server() as tools,
    ):
        model.script(MODEL, *SCRIPT)
        env = stack_env(home, prefect, url, KEY, FLOWMAESTRO_CRASH_DETECT_S=str(detect_s))
        api, base = start_serve(home, env, workers=0)

        class Workers:
            def start(self) -> Any:
                proc = start_worker(home, env, name=f"w-{uuid.uuid4().hex[:6]}")
                started.append(proc)
                return proc

        pool = Workers()
        rows = []
        try:
            victim = pool.start()
            async with client(base) as http:
                workflow_id = await save(http, agent_crash_canvas(f"bench-agent-{uuid.uuid4().hex[:6]}", model, tools))
                reference = await uncrashed_output(http, workflow_id)
                for trial in range(trials):
                    outcome = await one_agent_crash_trial(http, pool, victim, model, tools, workflow_id)
                    victim = outcome["fresh"]
                    found = problems_of(outcome, reference)
                    failed += bool(found)
                    rows.append(
                        [
                            trial,
                            ",".join(map(str, outcome["turns"])),
                            len(outcome["keys_of_call_3"]),
                            f"{outcome['ended_s']:.1f} s",
                            outcome["result"].get("status"),
                            "; ".join(found) or "ok",
                        ]
                    )
                    print(f"  trial {trial}: {rows[-1][-1]}", flush=True)
        finally:
            api.stop()
            for proc in started:
                proc.stop()
    print(_table(["trial", "turns asked", "sends of call 3", "kill -> end", "status", "problems"], rows))
    print(f"trials with a problem: {failed} of {trials}")
    return failed


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


async def main_async(args: argparse.Namespace) -> int:
    os.environ.setdefault("FLOWMAESTRO_HTTP_ALLOW_HOSTS", "127.0.0.1")  # the local model and tool servers
    print(f"load {_common.loadavg()}")
    rows = []
    for database in args.database.split(","):
        if database == "sqlite":
            url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='fm-bench-agent-')}/store.db"
            rows.append(await journal_overhead(database, url, args.turns, args.reps))
        else:
            with postgres_database("fm_bench_agent_journal") as url:
                rows.append(await journal_overhead(database, url, args.turns, args.reps))
    print("\nThe agent journal's overhead (median wall ms of one run; two durable writes a turn)")
    print(_table(["store", "turns", "journal ms", "no journal ms", "overhead ms/turn"], rows))
    if args.crash_trials:
        return await crash_trials(args.crash_trials, args.detect_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--database", default="sqlite,postgresql")
    parser.add_argument("--crash-trials", type=int, default=10)
    parser.add_argument("--detect-s", type=float, default=15.0)
    return 1 if asyncio.run(main_async(parser.parse_args(argv))) else 0


if __name__ == "__main__":
    raise SystemExit(main())
