"""Count the hops of one run, from ``POST /execute`` to its last SSE event, on a real stack.

Usage::

    python benchmarks/hops.py [--runs 3]

Starts a Prefect server of its own (SQLite, its access log on), a PostgreSQL database for the
store with every statement logged (``log_statement=all`` for that database only), Redis
databases 7 (event log) and 8 (cache locks) watched with ``MONITOR``, ``python -m cli serve
--workers 0`` (the API alone) and one ``python -m cli worker``. After a warm-up run, each
measured run of a 3-node chain (start -> transform -> end) is: ``POST .../execute``, then
``GET .../stream`` until ``execution:completed``. For each run it prints the Prefect requests
by caller (API or worker, by the connection's process) and path, the store statements and the
Redis commands, split at the moment the client received the first ``node:started``; then the
same counts for an idle stretch as long as the run (the worker's polls and heartbeats, which
no run causes). docs/architecture.md ("The hops of one run") has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

from tests.processes import free_port, postgres_database, stack_env, start_serve, start_worker  # noqa: E402

KEY = "hops-key"
PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")
EVENT_DB, LOCK_DB = 7, 8
CANVAS = {
    "name": "hops",
    "nodes": [
        {"id": "start", "type": "start", "data": {}},
        {"id": "t", "type": "transform", "data": {"output": "x"}},
        {"id": "end", "type": "end", "data": {"output": "{{ t }}"}},
    ],
    "edges": [{"id": "e1", "source": "start", "target": "t"}, {"id": "e2", "source": "t", "target": "end"}],
}
ACCESS = re.compile(r'127\.0\.0\.1:(\d+) - "(\w+) (\S+) HTTP')
UUIDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def shape(path: str) -> str:
    return UUIDS.sub("{id}", path.split("?")[0])


class PortOwners:
    """Which process each client port to the Prefect server or PostgreSQL belongs to (``ss
    -tnp``), and which client port each PostgreSQL backend of ``database`` serves, polled."""

    def __init__(self, prefect_port: int, database: str):
        self.prefect_port, self.database, self._stop = prefect_port, database, threading.Event()
        self.owner: dict[str, int] = {}
        self.backend_port: dict[str, str] = {}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._poll()), daemon=True)
        self._thread.start()

    async def _poll(self) -> None:
        import asyncpg

        pattern = re.compile(rf"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:(?:{self.prefect_port}|5432)\s.*pid=(\d+)")
        connection = await asyncpg.connect(user="postgres", host="127.0.0.1", database="postgres")
        while not self._stop.is_set():
            out = subprocess.run(["ss", "-tnp"], capture_output=True, text=True).stdout
            for port, pid in pattern.findall(out):
                self.owner[port] = int(pid)
            for row in await connection.fetch(
                "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1", self.database
            ):
                self.backend_port[str(row["pid"])] = str(row["client_port"])
            await asyncio.sleep(0.05)
        await connection.close()

    def stop(self) -> None:
        self._stop.set()


class RedisWatch:
    """Every command of Redis databases 7 and 8, with its time (``MONITOR``)."""

    def __init__(self) -> None:
        self.commands: list[tuple[float, int, str]] = []
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        with redis.Redis(socket_timeout=None, socket_keepalive=True).monitor() as monitor:
            for command in monitor.listen():
                if command["db"] in (EVENT_DB, LOCK_DB):
                    self.commands.append((command["time"], command["db"], command["command"].split()[0].upper()))


class PrefectLog:
    """The Prefect server's access log lines, each with the time it appeared (polled)."""

    def __init__(self, path: Path):
        self.path, self.lines = path, []
        self._offset = path.stat().st_size
        threading.Thread(target=self._tail, daemon=True).start()

    def _tail(self) -> None:
        while True:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                text = f.read()
            self._offset += len(text)
            now = time.time()
            self.lines.extend((now, m) for m in ACCESS.findall(text.decode(errors="replace")))
            time.sleep(0.01)

    def requests(self, since: float, until: float, roles: dict[int, str], owners: PortOwners) -> Counter[str]:
        return Counter(
            f"{roles.get(owners.owner.get(port, 0), '?')}: {method} {shape(path)}"
            for t, (port, method, path) in self.lines
            if since <= t < until
        )


def pg_statements(database: str, since: float, until: float, roles: dict[int, str], owners: PortOwners) -> Counter[str]:
    found: Counter[str] = Counter()
    for line in PG_LOG.read_text(errors="replace").splitlines():
        if f"@{database} " not in line or "LOG:  " not in line:
            continue
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if since <= stamp < until:
            backend = line[line.index("[") + 1 : line.index("]")]
            role = roles.get(owners.owner.get(owners.backend_port.get(backend, ""), 0), "?")
            statement = line.split("LOG:  ", 1)[1]
            statement = re.sub(r"^(execute|statement) [^:]*:\s*", "", statement)
            found[f"{role}: " + " ".join(statement.split()[:4])[:70]] += 1
    return found


def show(title: str, counts: Counter[str]) -> None:
    print(f"  {title}: {sum(counts.values())}")
    for what, n in sorted(counts.items()):
        print(f"    {n:3d}  {what}")


async def one_run(client: httpx.AsyncClient, workflow_id: str) -> dict[str, Any]:
    """The run's moments: POST sent, 202 received, and when the engine published its events
    (their own timestamps: same machine, same clock), the final one also when received."""
    marks: dict[str, Any] = {"posted": time.time()}
    answer = await client.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {}})
    assert answer.status_code == 202, answer.text
    marks["accepted"], marks["run_id"] = time.time(), answer.json()["execution_id"]
    async with aconnect_sse(client, "GET", f"/api/executions/{marks['run_id']}/stream") as source:
        async for sse in source.aiter_sse():
            published = datetime.fromisoformat(json.loads(sse.data)["timestamp"]).timestamp() if sse.data else 0
            if sse.event in ("execution:started", "node:started") and sse.event not in marks:
                marks[sse.event] = published
            if sse.event == "execution:completed":
                marks[sse.event], marks["received"] = published, time.time()
                break
    return marks


SPANS = (
    ("POST -> 202", "posted", "accepted"),
    ("202 -> execution:started", "accepted", "execution:started"),
    ("execution:started -> first node:started", "execution:started", "node:started"),
    ("first node:started -> execution:completed", "node:started", "execution:completed"),
    ("execution:completed -> received over SSE", "execution:completed", "received"),
    ("received -> 3 s later", "received", "settled"),
)


def report(
    title: str,
    since: float,
    until: float,
    database: str,
    roles: dict[int, str],
    owners: PortOwners,
    prefect: PrefectLog,
    watch: RedisWatch,
) -> dict[str, int]:
    counts = {
        "prefect": prefect.requests(since, until, roles, owners),
        "store": pg_statements(database, since, until, roles, owners),
        "redis": Counter(f"db{db} {c}" for t, db, c in watch.commands if since <= t < until),
    }
    print(f" {title} ({until - since:.2f} s): " + ", ".join(f"{k} {sum(v.values())}" for k, v in counts.items()))
    for kind, found in counts.items():
        for what, n in sorted(found.items()):
            print(f"    {kind:7s} {n:3d}  {what}")
    return {kind: sum(found.values()) for kind, found in counts.items()}


async def measure(
    args: argparse.Namespace,
    database: str,
    roles: dict[int, str],
    owners: PortOwners,
    prefect: PrefectLog,
    watch: RedisWatch,
    base: str,
) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
        saved = await client.post("/api/workflows", json={"canvas": dict(CANVAS, name=f"hops-{uuid.uuid4().hex[:6]}")})
        assert saved.status_code == 201, saved.text
        workflow_id = saved.json()["id"]
        for n in range(args.runs + 1):
            marks = await one_run(client, workflow_id)
            await asyncio.sleep(3)  # the worker ends the flow run after the final event: counted too
            marks["settled"] = time.time()
            await asyncio.sleep(0.5)  # the logs catch up
            print(
                f"\n{'warm-up (cold) run' if n == 0 else f'run {n}'} {marks['run_id']}: POST -> first node:started "
                f"{marks['node:started'] - marks['posted']:.2f} s, -> execution:completed received "
                f"{marks['received'] - marks['posted']:.2f} s"
            )
            for title, a, b in SPANS:
                report(title, marks[a], marks[b], database, roles, owners, prefect, watch)
            report(
                "TOTAL before the first node:started",
                marks["posted"],
                marks["node:started"],
                database,
                roles,
                owners,
                prefect,
                watch,
            )
            report("TOTAL", marks["posted"], marks["settled"], database, roles, owners, prefect, watch)
        idle = marks["settled"] - marks["posted"]
        t0 = time.time()
        await asyncio.sleep(idle + 0.5)
        print("\nno run")
        report("idle, as long as the last run", t0, t0 + idle, database, roles, owners, prefect, watch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from flows.local_server import start_server, stop

    home = Path(tempfile.mkdtemp(prefix="fm-hops-"))
    prefect_home = home / "prefect-server"
    info = start_server(prefect_home, free_port(), env={"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}, auth=False)
    procs = []
    try:
        with postgres_database("fm_hops") as url:
            database = url.rsplit("/", 1)[1]
            subprocess.run(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-qc",
                    f"ALTER DATABASE \"{database}\" SET log_statement = 'all'",
                ],
                check=True,
            )
            env = stack_env(
                home,
                info,
                url,
                KEY,
                FLOWMAESTRO_REDIS_URL=f"redis://127.0.0.1:6379/{EVENT_DB}",
                FLOWMAESTRO_CACHE_LOCK_REDIS_URL=f"redis://127.0.0.1:6379/{LOCK_DB}",
                FLOWMAESTRO_WORK_POOL=f"hops-{uuid.uuid4().hex[:6]}",
            )
            serve, base = start_serve(home, env, workers=0)
            procs.append(serve)
            worker = start_worker(home, env, name="hops-worker", pool=env["FLOWMAESTRO_WORK_POOL"])
            procs.append(worker)
            roles = {serve.pid: "API", worker.pid: "worker"}
            owners = PortOwners(int(info.api_url.rsplit(":", 1)[1].split("/")[0]), database)
            watch, prefect = RedisWatch(), PrefectLog(prefect_home / "prefect-server.log")
            time.sleep(2)
            asyncio.run(measure(args, database, roles, owners, prefect, watch, base))
            owners.stop()
            for proc in procs:
                proc.stop()
    finally:
        for proc in procs:
            proc.stop()
        stop(prefect_home)
    print(json.dumps({"home": str(home)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
