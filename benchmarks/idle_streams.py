"""What open streams of quiet runs cost an API process: ``python -m benchmarks.idle_streams``.

One Prefect server (on PostgreSQL, its access log on), and one ``flowmaestro serve --workers 0``
per checkout compared (this one, and ``--baseline DIR``, another checkout such as the main
branch's), each with its store and SQL event log in a PostgreSQL database of its own. Each API
starts ``--runs`` runs on a work pool no worker polls (they stay queued and write no event),
then ``--streams`` clients open the runs' streams and keep them open. Over ``--window``
seconds, side by side, it reports each API process's CPU, the transactions of its database,
and the Prefect requests it caused (told apart by route: a stream's own state read is
``GET /api/flow_runs/{id}``, the watcher's ``POST /api/flow_runs/filter``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import asyncpg
import httpx

from benchmarks._measure import PrefectRequests, Procs, table
from benchmarks._stack import AUTH, base_env, prefect_on_postgres
from tests.processes import ROOT, free_port, postgres_database

QUIET = {
    "name": "quiet",
    "nodes": [
        {"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {}},
        {"id": "end", "type": "end", "position": {"x": 200, "y": 0}, "data": {"output": "done"}},
    ],
    "edges": [{"id": "e", "source": "start", "target": "end"}],
}


def start_api(name: str, checkout: Path, prefect_url: str, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m cli serve --workers 0`` from ``checkout`` (``-m`` imports the checkout's code)."""
    home = Path(tempfile.mkdtemp(prefix=f"fm-idle-{name}-"))
    port = free_port()
    env = base_env(
        prefect_url,
        home,
        database_url=database_url,
        extra_env={"FLOWMAESTRO_WORK_POOL": f"unpolled-{name}", "FLOWMAESTRO_MAX_STREAMS_PER_RUN": "1000"},
    )
    env["PYTHONPATH"] = str(checkout)
    with (home / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--workers", "0", "--port", str(port)],
            cwd=checkout,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"{name}: serve did not start:\n{(home / 'serve.log').read_text()[-3000:]}")


async def start_runs(base: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=120) as client:
        saved = await client.post("/api/workflows", json={"canvas": QUIET})
        saved.raise_for_status()
        workflow = saved.json()["id"]
        runs = []
        for _ in range(count):
            started = await client.post(f"/api/workflows/{workflow}/execute", json={"inputs": {}})
            started.raise_for_status()
            runs.append(started.json()["execution_id"])
        return runs


async def hold_stream(client: httpx.AsyncClient, run: str, opened: asyncio.Event, stop: asyncio.Event) -> None:
    async with client.stream("GET", f"/api/executions/{run}/stream") as answer:
        answer.raise_for_status()
        opened.set()
        await stop.wait()


async def transactions(database: str) -> int:
    connection = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        return int(
            await connection.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
            )
        )
    finally:
        await connection.close()


async def measure(apis: dict[str, tuple[int, str, str]], runs: int, streams: int, window: float, log: Path) -> str:
    run_ids = {name: await start_runs(base, runs) for name, (_, base, _) in apis.items()}
    stop = asyncio.Event()
    tasks, clients = [], []
    for name, (_, base, _) in apis.items():
        client = httpx.AsyncClient(
            base_url=base, headers=AUTH, timeout=None, limits=httpx.Limits(max_connections=streams + 10)
        )
        clients.append(client)
        for i in range(streams):
            opened = asyncio.Event()
            tasks.append(asyncio.create_task(hold_stream(client, run_ids[name][i % runs], opened, stop)))
            await opened.wait()
    await asyncio.sleep(10)  # every stream past its first idle check
    procs = {name: Procs((pid,), tree=True) for name, (pid, _, _) in apis.items()}
    before = {name: (p.cpu_s() or 0.0, await transactions(apis[name][2])) for name, p in procs.items()}
    with PrefectRequests(log) as requests:
        await asyncio.sleep(window)
        after = {name: (p.cpu_s() or 0.0, await transactions(apis[name][2])) for name, p in procs.items()}
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.aclose()
    per_stream = requests.counts.get("GET /api/flow_runs/{id}", 0)
    watcher = requests.counts.get("POST /api/flow_runs/filter", 0)
    rows = []
    for name in apis:
        cpu = after[name][0] - before[name][0]
        xacts = after[name][1] - before[name][1]
        rows.append([name, f"{cpu:.2f}", f"{100 * cpu / window:.1f}%", f"{xacts / window:.1f}"])
    return "\n".join(
        [
            table(
                ["API", "CPU s", "CPU share", "DB transactions/s"],
                rows,
                title=f"{streams} open streams of {runs} quiet runs per API, over {window:.0f} s "
                "(SQL event log on PostgreSQL)",
            ),
            "Prefect requests in the window: GET /api/flow_runs/{id} (per-stream state reads) "
            f"{per_stream / window:.1f}/s, POST /api/flow_runs/filter (watcher reads) {watcher / window:.2f}/s",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare (e.g. the main branch's)")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--window", type=float, default=60.0)
    args = parser.parse_args()
    checkouts = {"this": ROOT} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with ExitStack() as stack:
        prefect = stack.enter_context(prefect_on_postgres(Path(tempfile.mkdtemp(prefix="fm-idle-prefect-"))))
        os.environ["PREFECT_API_URL"] = prefect.api_url
        apis: dict[str, tuple[int, str, str]] = {}
        for name, checkout in checkouts.items():
            url = stack.enter_context(postgres_database(f"fm_idle_{name}"))
            process, base = start_api(name, checkout, prefect.api_url, url)
            stack.callback(lambda p=process: (os.killpg(p.pid, signal.SIGINT), p.wait(30)))
            apis[name] = (process.pid, base, url.rsplit("/", 1)[1])
        print(asyncio.run(measure(apis, args.runs, args.streams, args.window, prefect.log)))


if __name__ == "__main__":
    main()
