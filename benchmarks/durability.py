"""What durability costs and what it delivers.

Usage::

    python -m benchmarks.durability [--quick] [--reps 5] [--database sqlite,postgresql]
                                    [--crash-trials 20] [--detect-s 15] [--seed N]

1. **The journal's cost** on the engine benchmarks' chain and fan-out, in one process
   against one Prefect server, rounds interleaved. Every variant runs a saved workflow the
   way a worker does (the canvas loaded from the store, the run's start and result
   recorded), with the journal on (``journal``) or with its writes dropped (``no journal``:
   the run before replay-safety existed); beside them the same graph as a hand-written
   Prefect flow (``hand``) and in plain asyncio (``asyncio``). Scenarios:
   ``chain-tasks``: 40 [20] ``delay 0`` nodes in a chain (each a task run with side effects:
   one journal write each, before the next starts); ``chain-inline``: 40 [20] ``transform``
   nodes (pure: their outcomes ride along with the next write); ``fanout``: 100 [50]
   ``delay 0.1`` nodes then a ``merge``.
2. **Crash trials**: the harness of tests/test_durability.py (a Prefect server on
   PostgreSQL, the API and worker processes, a local HTTP server counting requests with
   their Idempotency-Key): each trial SIGKILLs the worker's process group after a random
   number of requests and starts a fresh worker; it reports detection (kill -> Crashed) and
   resume (Crashed -> Running again) times, requests sent, and any completed node executed
   again, lost run or wrong output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks import _common

SERVER = _common.prepare_prefect()  # before prefect is imported

from benchmarks import engine  # noqa: E402  (its graphs and hand-written flows; imports prefect after the line above)
from deployments.run_store import SqlRunStore  # noqa: E402
from flows.flow import workflow_flow  # noqa: E402
from flows.run_context import RunContext  # noqa: E402
from store.db import upgrade_schema  # noqa: E402
from store.queries import Workflows  # noqa: E402
from tests.processes import postgres_database  # noqa: E402

OWNER = "bench"


class NoJournalStore(SqlRunStore):
    """The store with the journal's reads and writes dropped: a run as it was before."""

    async def outcomes(self, journal_id: str) -> list[Any]:
        return []

    async def save_outcomes(
        self, journal_id: str, outcomes: Any, *, workflow_id: str | None, owner: str | None, **_: Any
    ) -> None:
        return None


async def saved_runner(store: SqlRunStore, raw: dict[str, Any]) -> _common.Runner:
    """A runner of ``raw`` saved as a workflow of ``store``, run as a worker runs it."""
    saved = await Workflows(store.workflows.sessions).create(
        OWNER, f"{raw['name']}-{uuid.uuid4().hex[:6]}", raw, "bench"
    )
    context = replace(RunContext.from_environment(), store=store)
    bound = workflow_flow(context)

    async def run() -> str:
        state = await bound(workflow_id=saved.workflow_id, owner=OWNER, inputs={}, return_state=True)
        result = await state.result(raise_on_failure=False)
        if not state.is_completed():
            raise RuntimeError(f"{raw['name']} ended {state.name}: {result}")
        return result["id"]

    return run


def scenarios(quick: bool) -> list[tuple[str, dict[str, Any], Any, Any, int]]:
    chain_n, fan_w = (20, 50) if quick else (40, 100)
    return [
        (
            "chain-tasks",
            engine.chain_canvas(chain_n, "delay0"),
            lambda: engine.hand_chain(chain_n, return_state=True),
            lambda: engine.aio_chain(chain_n),
            chain_n,
        ),
        (
            "chain-inline",
            engine.chain_canvas(chain_n, "transform"),
            lambda: engine.hand_chain(chain_n, return_state=True),
            lambda: engine.aio_chain(chain_n),
            chain_n,
        ),
        (
            "fanout",
            engine.fanout_canvas(fan_w, engine.FANOUT_SLEEP),
            lambda: engine.hand_fanout(fan_w, engine.FANOUT_SLEEP, return_state=True),
            lambda: engine.aio_fanout(fan_w, engine.FANOUT_SLEEP),
            fan_w + 1,
        ),
    ]


async def journal_cost(database: str, url: str, reps: int, quick: bool) -> list[list[Any]]:
    await upgrade_schema(url)
    with_journal, without = SqlRunStore.from_url(url), NoJournalStore.from_url(url)
    rows = []
    try:
        for name, raw, hand, aio, nodes in scenarios(quick):
            variants = {
                "journal": await saved_runner(with_journal, raw),
                "no journal": await saved_runner(without, raw),
                "hand": _hand(hand),
                "asyncio": _aio(aio),
            }
            walls: dict[str, list[float]] = {v: [] for v in variants}
            cpus: dict[str, list[float]] = {v: [] for v in variants}
            for runner in variants.values():  # warm-up
                await _common.measure(runner)
            for round_ in range(reps):
                order = list(variants)
                order = order[round_ % len(order) :] + order[: round_ % len(order)]
                for variant in order:
                    sample = await _common.measure(variants[variant])
                    walls[variant].append(sample.wall)
                    cpus[variant].append(sample.client_cpu)
            med = {v: statistics.median(w) for v, w in walls.items()}
            cpu = {v: statistics.median(c) for v, c in cpus.items()}
            rows.append(
                [
                    database,
                    name,
                    nodes,
                    *(f"{med[v]:.3f}" for v in variants),
                    f"{med['journal'] / med['no journal']:.2f}x",
                    f"{(med['journal'] - med['no journal']) / nodes * 1000:+.2f}",
                    f"{cpu['journal'] / cpu['no journal']:.2f}x",
                    f"{med['journal'] / med['hand']:.2f}x",
                ]
            )
    finally:
        await with_journal.close()
        await without.close()
    return rows


def _hand(make: Any) -> _common.Runner:
    async def run() -> str:
        state = await make()
        if not state.is_completed():
            raise RuntimeError(f"hand-written flow ended {state.name}")
        return str(state.state_details.flow_run_id)

    return run


def _aio(make: Any) -> _common.Runner:
    async def run() -> None:
        await make()
        return None

    return run


async def crash_trials(trials: int, detect_s: float, seed: int) -> None:
    from tests.crash_harness import client, crash_canvas, one_crash_trial, problems_of, save, seconds
    from tests.processes import CountingServer, prefect_on_postgres, stack_env, start_serve, start_worker

    rng = random.Random(seed)
    home = Path(tempfile.mkdtemp(prefix="fm-bench-durability-"))
    print(f"\ncrash trials: {trials}, FLOWMAESTRO_CRASH_DETECT_S={detect_s:g}, seed {seed}; logs in {home}")
    workers: list[Any] = []
    with (
        prefect_on_postgres(home / "prefect") as prefect,
        postgres_database("fm_bench_store") as url,
        CountingServer() as counting,
    ):
        from tests.crash_harness import KEY

        env = stack_env(home, prefect, url, KEY, FLOWMAESTRO_CRASH_DETECT_S=str(detect_s))
        api, base = start_serve(home, env, workers=0)

        class Workers:
            def start(self) -> Any:
                proc = start_worker(home, env, name=f"w-{uuid.uuid4().hex[:6]}")
                workers.append(proc)
                return proc

        pool = Workers()
        rows, problems, detect, resume = [], 0, [], []
        try:
            victim = pool.start()
            async with client(base) as http:
                workflow_id = await save(http, crash_canvas(f"bench-crash-{uuid.uuid4().hex[:6]}"))
                for trial in range(trials):
                    outcome = await one_crash_trial(
                        http, pool, victim, counting, url, prefect.api_url, workflow_id, rng
                    )
                    victim = outcome["fresh"]
                    found = problems_of(outcome, detect_s + 15)
                    problems += bool(found)
                    if outcome["detect_s"] is not None:
                        detect.append(outcome["detect_s"])
                    if outcome["resume_s"] is not None:
                        resume.append(outcome["resume_s"])
                    restored = sum(1 for r in outcome["result"].get("nodes", {}).values() if r.get("restored"))
                    rows.append(
                        [
                            trial,
                            outcome["kill_after"],
                            seconds(outcome["detect_s"]),
                            seconds(outcome["resume_s"]),
                            len(outcome["requests"]),
                            restored,
                            len(outcome["repeated"]),
                            outcome["result"].get("status"),
                            "; ".join(found) or "ok",
                        ]
                    )
                    print(f"  trial {trial}: {rows[-1][-1]}", flush=True)
        finally:
            api.stop()
            for proc in workers:
                proc.stop()
    print(
        _table(
            ["trial", "killed after", "detect", "resume", "requests", "restored", "repeated", "status", "problems"],
            rows,
        )
    )
    print(
        f"trials with a problem: {problems} of {trials}; completed nodes executed again: "
        f"{sum(r[6] for r in rows)}; detection median {statistics.median(detect):.1f} s "
        f"(max {max(detect):.1f} s), resume median {statistics.median(resume):.1f} s (max {max(resume):.1f} s)"
        if detect and resume
        else f"trials with a problem: {problems} of {trials}"
    )


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


async def main_async(args: argparse.Namespace) -> None:
    print(f"Prefect server: {SERVER.api_url}; load {_common.loadavg()}")
    rows: list[list[Any]] = []
    for database in args.database.split(","):
        if database == "sqlite":
            url = f"sqlite+aiosqlite:///{tempfile.mkdtemp(prefix='fm-bench-')}/store.db"
            rows += await journal_cost(database, url, args.reps, args.quick)
        else:
            with postgres_database("fm_bench_journal") as url:
                rows += await journal_cost(database, url, args.reps, args.quick)
    print("\nThe journal's cost (median wall seconds of saved runs; ratios journal / no journal)")
    print(
        _table(
            [
                "store",
                "scenario",
                "nodes",
                "journal",
                "no journal",
                "hand",
                "asyncio",
                "wall ratio",
                "ms/node",
                "cpu ratio",
                "vs hand",
            ],
            rows,
        )
    )
    if args.crash_trials:
        await crash_trials(args.crash_trials, args.detect_s, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--database", default="sqlite,postgresql")
    parser.add_argument("--crash-trials", type=int, default=20)
    parser.add_argument("--detect-s", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FLOWMAESTRO_CRASH_SEED", time.time())))
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
