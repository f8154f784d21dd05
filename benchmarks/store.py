"""List and filter latencies of the store on PostgreSQL: 100,000 runs and 10,000 workflows.

Usage::

    python -m benchmarks.store [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
                               [--executions 100000] [--workflows 10000] [--repeat 50]

Creates a scratch database (dropped at the end), migrates it as the API does, writes the rows
in bulk: one owner with 80% of the runs and half of the workflows (the owner whose pages are
measured: the worst case), the rest over 50 other owners; runs over 90 days, 10% failed, a
third by schedules; a workflow in ten archived, one tag of twenty each. Then times each list
query as the API runs it (``store.lists``, ``store.workflow_meta``, ``store.audit``: the same
functions, 50 rows a page), ``--repeat`` times, and prints p50 and p95 in milliseconds. The
API's own cost (auth, JSON) is not in these numbers; the database and the driver are.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import insert, select, text

from store.audit import AuditLog
from store.db import AuditRow, ExecutionRow, Workflow, WorkflowTag, make_engine, sessions, upgrade_schema
from store.lists import ExecutionFilter, executions_page
from store.pagination import Cursor, Page
from store.workflow_meta import WorkflowCatalog

OWNER = "benchmark-owner"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
CHUNK = 5_000


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


async def fill(url: str, n_executions: int, n_workflows: int) -> dict[str, Any]:
    """Write the rows; what the queries need (a busy workflow id, a mid-list cursor...)."""
    rng = random.Random(7)
    engine = make_engine(url)
    owners = [OWNER] * 50 + [f"owner-{i}" for i in range(50)]
    workflows: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    for i in range(n_workflows):
        owner = OWNER if i % 2 == 0 else f"owner-{i % 50}"
        created = NOW - timedelta(days=365) + timedelta(minutes=i)
        workflow_id = str(uuid.uuid4())
        workflows.append(
            {
                "id": workflow_id,
                "owner": owner,
                "name": f"workflow {i} {rng.choice(['billing', 'support', 'digest', 'crm', 'etl'])}",
                "latest_version": 1,
                "created_at": created,
                "updated_at": created,
                "description": f"does {rng.choice(['refunds', 'triage', 'reports', 'sync'])} number {i}",
                "status": "archived" if i % 10 == 4 else "active",
            }
        )
        tags.append({"workflow_id": workflow_id, "tag": f"tag-{(i // 2) % 20}"})
    mine = [w for w in workflows if w["owner"] == OWNER]
    executions: list[dict[str, Any]] = []
    for i in range(n_executions):
        owner = OWNER if i % 5 else rng.choice(owners[50:])
        workflow = rng.choice(mine) if owner == OWNER else rng.choice(workflows)
        created = NOW - timedelta(seconds=rng.uniform(0, 90 * 86_400))
        trigger = "schedule" if i % 3 == 0 else "api"
        executions.append(
            {
                "id": str(uuid.uuid4()),
                "owner": owner,
                "workflow_id": workflow["id"],
                "version": 1,
                "workflow_name": workflow["name"],
                "status": "failed" if i % 7 == 0 else "completed",
                "inputs": {"n": i},
                "result": None,
                "trigger_type": trigger,
                "trigger": {"type": trigger},
                "created_at": created,
                "updated_at": created,
            }
        )
    audit = [
        {
            "id": str(uuid.uuid4()),
            "at": NOW - timedelta(seconds=i),
            "owner": OWNER,
            "actor": OWNER,
            "action": "execution.start",
            "target_type": "execution",
            "target_id": e["id"],
            "details": {},
        }
        for i, e in enumerate(executions[: n_executions // 2])
    ]
    async with engine.begin() as connection:
        for table, rows in ((Workflow, workflows), (WorkflowTag, tags), (ExecutionRow, executions), (AuditRow, audit)):
            for chunk in _chunks(rows):
                await connection.execute(insert(table), chunk)
        await connection.execute(text("ANALYZE"))
    mine_runs = sorted((e for e in executions if e["owner"] == OWNER), key=lambda e: e["created_at"], reverse=True)
    busiest = max(mine, key=lambda w: sum(1 for e in executions[:2000] if e["workflow_id"] == w["id"]))
    middle = mine_runs[len(mine_runs) // 2]
    await engine.dispose()
    return {
        "busy_workflow": busiest["id"],
        "mid_cursor": Cursor(middle["created_at"], middle["id"]).encode(),
        "runs_of_owner": len(mine_runs),
        "workflows_of_owner": len(mine),
    }


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float, int]:
    """p50 and p95 in ms, and the rows of the last answer."""
    await call()  # warm: connection, plan cache
    times = []
    rows = 0
    for _ in range(repeat):
        start = time.perf_counter()
        page = await call()
        times.append((time.perf_counter() - start) * 1000)
        rows = len(page.items)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.95))], rows


async def measure(url: str, facts: dict[str, Any], repeat: int) -> list[tuple[str, float, float, int]]:
    engine = make_engine(url)
    database = sessions(engine)
    catalog, audit = WorkflowCatalog(database), AuditLog(database)
    week = (NOW - timedelta(days=7), NOW)

    def runs(**where: Any) -> Callable[[], Awaitable[Any]]:
        cursor = where.pop("cursor", None)
        return lambda: executions_page(database, OWNER, ExecutionFilter(**where), limit=50, cursor=cursor)

    async def floor() -> Any:
        async with database() as session:
            await session.execute(text("SELECT 1"))
        return Page([], None)

    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("floor: a session and SELECT 1 (the machine's own cost)", floor),
        ("executions: first page", runs()),
        ("executions: a page in the middle (cursor)", runs(cursor=facts["mid_cursor"])),
        ("executions: workflow_id", runs(workflow_id=facts["busy_workflow"])),
        ("executions: status=failed", runs(status="failed")),
        ("executions: trigger=schedule", runs(trigger="schedule")),
        ("executions: since/until (7 days)", runs(since=week[0], until=week[1])),
        ("executions: status=failed, trigger, 7 days", runs(status="failed", trigger="schedule", since=week[0])),
        ("executions: status=running (none: not final)", runs(status="running")),
        ("workflows: first page", lambda: catalog.page(OWNER, limit=50)),
        ("workflows: q=billing (name or description)", lambda: catalog.page(OWNER, q="billing", limit=50)),
        ("workflows: q=no-such-word (scans all)", lambda: catalog.page(OWNER, q="no-such-word", limit=50)),
        ("workflows: tag=tag-3", lambda: catalog.page(OWNER, tag="tag-3", limit=50)),
        ("workflows: status=archived", lambda: catalog.page(OWNER, status="archived", limit=50)),
        ("audit: first page", lambda: audit.list(OWNER, limit=50)),
        ("audit: action=execution.start", lambda: audit.list(OWNER, action="execution.start", limit=50)),
    ]
    results = []
    for name, call in cases:
        p50, p95, rows = await timed(call, repeat)
        results.append((name, p50, p95, rows))
    async with database() as session:
        plan = "\n".join(
            row[0]
            for row in await session.execute(
                text("EXPLAIN SELECT * FROM executions WHERE owner = :o ORDER BY created_at DESC, id DESC LIMIT 51"),
                {"o": OWNER},
            )
        )
        explained = await session.execute(
            text(
                "EXPLAIN ANALYZE SELECT * FROM workflows WHERE owner = :o AND deleted_at IS NULL "
                "ORDER BY created_at, id LIMIT 51"
            ),
            {"o": OWNER},
        )
        plan += "\n" + "\n".join(row[0] for row in explained)
        count = await session.scalar(select(text("count(*)")).select_from(ExecutionRow))
    await engine.dispose()
    print(f"rows: {count} executions; plan of the first page:\n{plan}\n")
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    name = f"fm_bench_store_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    host = args.admin_url.split("://", 1)[1].rsplit("/", 1)[0]
    url = f"postgresql+asyncpg://{host}/{name}"
    try:
        await upgrade_schema(url)
        started = time.perf_counter()
        facts = await fill(url, args.executions, args.workflows)
        print(
            f"filled in {time.perf_counter() - started:.1f} s: {args.executions} executions "
            f"({facts['runs_of_owner']} of the measured owner), {args.workflows} workflows "
            f"({facts['workflows_of_owner']} of the measured owner)"
        )
        results = await measure(url, facts, args.repeat)
        width = max(len(r[0]) for r in results)
        print(f"{'query (50 a page)':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}  rows")
        for query, p50, p95, rows in results:
            print(f"{query:<{width}}  {p50:7.2f}  {p95:7.2f}  {rows}")
    finally:
        admin = await asyncpg.connect(args.admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
