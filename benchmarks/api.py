"""End-to-end latency and throughput of the REST API, measured against a real
``flowmaestro serve`` process (uvicorn, runs executing inside it) over HTTP and SSE.

Usage::

    python benchmarks/api.py [--quick] [--redis] [--only latency,concurrent] [--runs 50] [--budget-a 90]
                             [--concurrent 100] [--post-limits 0,10] [--keep]

The script starts ``python -m cli serve --port P`` with a temporary ``FLOWMAESTRO_HOME``,
its API database in SQLite there (``FLOWMAESTRO_DATABASE_URL``), ``FLOWMAESTRO_API_KEYS`` and
``PREFECT_API_URL`` pointing at a healthy Prefect server (``$PREFECT_API_URL``, else
http://127.0.0.1:4200/api, else the embedded server started by ``benchmarks/_common.py``).
``--redis`` sets ``FLOWMAESTRO_REDIS_URL`` (event log in Redis streams instead of SQL).

(a) **latency**: ``--runs`` (50; 10 with ``--quick``) executions, one after the other (stopping
    early after ``--budget-a`` seconds, 90; 30 with ``--quick``), of a 3-node workflow (start -> transform -> end). For each: ``POST /api/workflows/{id}/execute``,
    then, right after the 202, ``GET /api/executions/{id}/stream`` (httpx-sse) until
    ``execution:completed``. Reported separately for the first run after the server started
    ("cold", n=1) and the others ("warm"): POST -> 202, POST -> first ``node:started``
    received, POST -> ``execution:completed`` received (p50/p95/max), and a breakdown of the
    warm medians using the events' own ``timestamp`` (set by the engine when it published
    the event; same machine, same clock): accept (POST -> 202), 202 -> the engine published
    the first ``node:started``, the run itself (first ``node:started`` -> ``execution:completed``
    published) and delivery (published -> received by the SSE client).

(b) **throughput**: ``--concurrent`` (100; 20 with ``--quick``) executions of a 5-node chain
    (start -> t1 -> t2 -> t3 -> end) fired at once, each followed over its own SSE stream until
    its final event: completed runs per second (first POST -> last ``execution:completed``),
    latency POST -> completion (p50/p95/max), POST -> 202 (p50/p95), and errors: answers other
    than 202, runs that ended otherwise than ``completed``, streams that broke or timed out,
    and runs whose stored status (``GET /api/executions/{id}``) is not ``completed``. One round
    per ``--post-limits`` value: 0 fires every POST at once; N keeps at most N POSTs in flight
    (the runs themselves still overlap), which tells the API's admission apart from the runs.
    Failed runs are left out of the latency columns and counted in the error columns.

Exceptions the serve process logged during each part are summarized from its log
(``<home>/serve.log``; ``--keep`` keeps the temporary home), with the requests its Prefect
client retried (``prefect.client`` logs at DEBUG in the serve process: a 503 from Prefect
costs a ~2 s backoff).

CPU seconds used by the serve process and by the Prefect server (found by its listening
port, when on this host) during each part, and the load average, are printed with the
tables: on a shared machine they say how much of the wall time was ours. Two probes run
meanwhile, one request every 0.25 s: ``GET /docs`` of the serve process (a static page: its
answer time is how long the serve event loop was too busy to answer) and
``POST /flow_runs/count`` of the Prefect server (how responsive Prefect itself was).

``events.py`` imports the serve-process helpers of this module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import httpx  # noqa: E402
from httpx_sse import aconnect_sse  # noqa: E402

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FINAL = ("execution:completed", "execution:failed", "execution:cancelled")
DEFAULT_PREFECT = "http://127.0.0.1:4200/api"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# ----------------------------------------------------------------------------- environment


def _healthy(api_url: str, timeout: float = 5.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def prefect_api_url() -> str:
    """A healthy Prefect server: ``$PREFECT_API_URL``, else the one on :4200, else the
    embedded server (started if needed) through ``_common.prepare_prefect``."""
    for url in (os.environ.get("PREFECT_API_URL"), DEFAULT_PREFECT):
        if url and _healthy(url):
            return url
    import _common  # no Prefect import in this process until then; none afterwards either

    return _common.prepare_prefect().api_url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_listening_on(port: int) -> int | None:
    """The pid of the local process listening on a TCP port (Linux /proc), if visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by a process."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class CpuMeter:
    """CPU seconds used by some processes while a block runs, and the wall time."""

    def __init__(self, **pids: int | None):
        self.pids = pids
        self.used: dict[str, float | None] = {}
        self.wall = 0.0

    def __enter__(self) -> "CpuMeter":
        self._before = {name: cpu_s(pid) for name, pid in self.pids.items()}
        self._own = time.process_time()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._t
        for name, pid in self.pids.items():
            before, after = self._before[name], cpu_s(pid)
            self.used[name] = None if before is None or after is None else after - before
        self.used["client"] = time.process_time() - self._own

    def describe(self) -> str:
        parts = [f"wall {self.wall:.1f} s"]
        for name, used in self.used.items():
            if used is not None:
                parts.append(f"{name} CPU {used:.1f} s ({used / self.wall * 100:.0f}% of a core)")
        return ", ".join(parts) + f"; load average {loadavg()}"


class Probe:
    """Times one cheap request every ``interval`` seconds while a block runs: ``GET /docs`` of
    the serve process (static: its answer time is how long its event loop was busy) or
    ``POST /flow_runs/count`` of the Prefect server (one query: how responsive Prefect was)."""

    def __init__(self, name: str, method: str, url: str, interval: float = 0.25, body: Any = None):
        self.name, self.method, self.url, self.interval, self.body = name, method, url, interval, body
        self.times: list[float] = []
        self.failures = 0

    async def __aenter__(self) -> "Probe":
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    response = await client.request(self.method, self.url, json=self.body)
                    if response.status_code >= 400:
                        self.failures += 1
                except httpx.HTTPError:
                    self.failures += 1
                self.times.append(time.perf_counter() - started)
                try:
                    await asyncio.wait_for(self._stop.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass

    def describe(self) -> str:
        t = self.times
        return (f"{self.name}: {len(t)} probes, p50 {ms(pct(t, 50), 0)} ms, p95 {ms(pct(t, 95), 0)} ms, "
                f"max {ms(max(t) if t else None, 0)} ms" + (f", {self.failures} failed" if self.failures else ""))


def probes(served: Served, prefect_url: str) -> tuple[Probe, Probe]:
    return (Probe("serve event loop (GET /docs)", "GET", f"{served.base}/docs"),
            Probe("Prefect API (POST /flow_runs/count)", "POST", f"{prefect_url.rstrip('/')}/flow_runs/count",
                  body={}))


# ----------------------------------------------------------------------------- serve process


@dataclass
class Served:
    """A ``python -m cli serve`` process with a temporary home (see ``start_serve``)."""

    name: str
    base: str
    process: subprocess.Popen[bytes]
    home: Path
    startup_s: float
    redis_url: str | None
    run_ids: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.home / "serve.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C: a clean shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def start_serve(name: str, prefect_url: str, *, redis_url: str | None = None, home: Path | None = None,
                extra_env: dict[str, str] | None = None, wait: bool = True) -> Served:
    """Start ``python -m cli serve --port P``: SQLite API database (and SQL event log,
    unless ``redis_url``) in a temporary home. Its output goes to ``<home>/serve.log``."""
    home = home or Path(tempfile.mkdtemp(prefix=f"fm-bench-{name}-"))
    port = free_port()
    # prefect.client at DEBUG logs its retries ("retryable status code 503 ...", counted by LogWatch)
    # and one line per client it connects: a few lines per run.
    env = dict(os.environ, PREFECT_API_URL=prefect_url, FLOWMAESTRO_API_KEYS=f"bench:{KEY}",
               FLOWMAESTRO_HOME=str(home), FLOWMAESTRO_DATABASE_URL=f"sqlite+aiosqlite:///{home / 'api.db'}",
               PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL="DEBUG")
    env.pop("FLOWMAESTRO_REDIS_URL", None)
    if redis_url:
        env["FLOWMAESTRO_REDIS_URL"] = redis_url
    env.update(extra_env or {})
    with (home / "serve.log").open("ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=ROOT,
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    served = Served(name, f"http://127.0.0.1:{port}", process, home, 0.0, redis_url)
    if wait:
        wait_healthy(served, time.perf_counter())
    return served


def wait_healthy(served: Served, started: float, timeout: float = 120.0) -> None:
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"flowmaestro serve ({served.name}) exited:\n{served.log_tail()}")
        try:
            if httpx.get(f"{served.base}/health", timeout=5).status_code == 200:
                served.startup_s = time.perf_counter() - started
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    served.stop()
    raise RuntimeError(f"flowmaestro serve ({served.name}) did not become healthy:\n{served.log_tail()}")


def api_client(base: str, timeout: float = 300.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers=AUTH, timeout=httpx.Timeout(timeout, connect=30),
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=200))


async def save_workflow(client: httpx.AsyncClient, canvas: dict[str, Any]) -> str:
    canvas = dict(canvas, name=f"{canvas.get('name', 'bench')}-{uuid.uuid4().hex[:8]}")
    saved = await client.post("/api/workflows", json={"canvas": canvas})
    if saved.status_code != 201:
        raise RuntimeError(f"saving {canvas['name']}: {saved.status_code} {saved.text[:500]}")
    return saved.json()["id"]


def event_time(data: dict[str, Any]) -> float:
    """The ``timestamp`` of an event (set by the engine when it published it), as epoch seconds."""
    return datetime.fromisoformat(data["timestamp"]).timestamp()


# ----------------------------------------------------------------------------- statistics


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value * 1000:>{width}.0f}"


def table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = [] if title is None else [title]
    out.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    out.append("  ".join("-" * w for w in widths))
    for row in cells:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(out)


# ----------------------------------------------------------------------------- canvases


def chain_canvas(name: str, middle: int) -> dict[str, Any]:
    """start -> t1 -> ... -> t<middle> -> end (transform nodes)."""
    ids = ["start", *(f"t{i}" for i in range(1, middle + 1)), "end"]
    nodes = [{"id": "start", "type": "start", "data": {}}]
    nodes += [{"id": f"t{i}", "type": "transform", "data": {"output": f"{{{{ {i} }}}}"}}
              for i in range(1, middle + 1)]
    nodes.append({"id": "end", "type": "end", "data": {"output": f"{{{{ {ids[-2]} }}}}"}})
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(ids, ids[1:]))]
    return {"name": name, "nodes": nodes, "edges": edges}


# ----------------------------------------------------------------------------- one execution


@dataclass
class Execution:
    posted: float = 0.0  # epoch seconds (comparable with the events' timestamps)
    accepted: float | None = None
    status_code: int | None = None
    execution_id: str | None = None
    first_started_recv: float | None = None
    first_started_pub: float | None = None
    final_recv: float | None = None
    final_pub: float | None = None
    final_type: str | None = None
    events: int = 0
    error: str | None = None
    lags: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.final_type == "execution:completed"


async def execute_and_follow(client: httpx.AsyncClient, workflow_id: str, *, post_timeout: float = 60.0,
                             timeout: float = 180.0, gate: asyncio.Semaphore | None = None,
                             registry: list[str] | None = None) -> Execution:
    """POST execute, then follow the SSE stream (opened right after the 202) to the final event.
    ``gate`` bounds the POSTs in flight (not the runs)."""
    if gate is not None:
        await gate.acquire()
    run = Execution(posted=time.time())
    try:
        answer = await client.post(f"/api/workflows/{workflow_id}/execute", json={"inputs": {}},
                                   timeout=httpx.Timeout(post_timeout, connect=30))
    except httpx.HTTPError as exc:
        run.error = f"POST {type(exc).__name__}"
        return run
    finally:
        if gate is not None:
            gate.release()
    run.accepted, run.status_code = time.time(), answer.status_code
    if answer.status_code != 202:
        run.error = f"HTTP {answer.status_code}"
        return run
    run.execution_id = answer.json()["execution_id"]
    if registry is not None:
        registry.append(run.execution_id)
    try:
        await asyncio.wait_for(_follow(client, run), timeout)
    except asyncio.TimeoutError:
        run.error = "stream timeout"
    except (httpx.HTTPError, ValueError) as exc:
        run.error = f"stream {type(exc).__name__}"
    return run


async def _follow(client: httpx.AsyncClient, run: Execution) -> None:
    async with aconnect_sse(client, "GET", f"/api/executions/{run.execution_id}/stream") as source:
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # httpx-sse reports heartbeat comments as empty events
            now = time.time()
            data = json.loads(sse.data)
            run.events += 1
            published = event_time(data)
            run.lags.append(now - published)
            if sse.event == "node:started" and run.first_started_recv is None:
                run.first_started_recv, run.first_started_pub = now, published
            if sse.event in FINAL:
                run.final_recv, run.final_pub, run.final_type = now, published, sse.event
                return
    raise ValueError("the stream ended without a final event")


async def stored_status(client: httpx.AsyncClient, execution_id: str, timeout: float = 30.0) -> str:
    """The status ``GET /api/executions/{id}`` reports, once final (or whatever it is at the timeout)."""
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        try:
            answer = await client.get(f"/api/executions/{execution_id}")
            status = answer.json().get("status", f"HTTP {answer.status_code}")
        except (httpx.HTTPError, ValueError) as exc:
            status = type(exc).__name__
        if status in ("completed", "failed", "cancelled"):
            return status
        await asyncio.sleep(0.25)
    return status


class LogWatch:
    """The exceptions the serve process logged while a block ran (from its log file)."""

    PATTERN = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout)): (.{0,140})")

    def __init__(self, served: Served):
        self.path = served.home / "serve.log"

    def __enter__(self) -> "LogWatch":
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def summary(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        found: Counter = Counter()
        retries: Counter = Counter()
        for line in text.splitlines():
            match = self.PATTERN.match(line)
            if match:
                found[f"{match.group(1)}: {re.sub(r'[0-9a-f-]{36}', '<id>', match.group(2))}"] += 1
            elif "prefect.client" in line and "Another attempt will be made" in line:
                code = re.search(r"retryable status code (\d+)", line)
                retries[code.group(1) if code else "exception"] += 1
        # Each unexpected error is logged twice (FlowMaestro's handler, then uvicorn): halve.
        lines = [f"{max(1, n // 2)} x {what}" for what, n in found.most_common(4)]
        if retries:
            lines.append(f"Prefect client retried {sum(retries.values())} request(s) after ~2 s backoff: "
                         + ", ".join(f"{n} x {code}" for code, n in retries.items()))
        return lines


def phase_rows(runs: list[Execution]) -> list[list[Any]]:
    ok = [r for r in runs if r.ok]
    parts = {
        "POST -> 202 (accept)": [r.accepted - r.posted for r in runs if r.accepted is not None],
        "POST -> 1st node:started published (engine start)": [r.first_started_pub - r.posted for r in ok],
        "1st node:started -> execution:completed published (the run)": [r.final_pub - r.first_started_pub
                                                                        for r in ok],
        "execution:completed published -> received (delivery)": [r.final_recv - r.final_pub for r in ok],
        "any event published -> received (delivery, all events)": [lag for r in ok for lag in r.lags],
    }
    return [[name, len(v), ms(pct(v, 50)), ms(pct(v, 95)), ms(max(v) if v else None)] for name, v in parts.items()]


# ----------------------------------------------------------------------------- (a) latency


async def bench_latency(served: Served, runs: int, budget_s: float, prefect_url: str, prefect_pid: int | None
                        ) -> str:
    loop_probe, prefect_probe = probes(served, prefect_url)
    async with api_client(served.base) as client, loop_probe, prefect_probe:
        workflow_id = await save_workflow(client, chain_canvas("bench-latency", 1))
        results: list[Execution] = []
        with CpuMeter(serve=served.pid, prefect=prefect_pid) as meter, LogWatch(served) as watch:
            deadline = time.monotonic() + budget_s
            for _ in range(runs):
                results.append(await execute_and_follow(client, workflow_id, registry=served.run_ids))
                if time.monotonic() > deadline:
                    break
    errors = Counter(r.error or r.final_type for r in results if not r.ok)

    def row(label: str, group: list[Execution]) -> list[Any]:
        accept = [r.accepted - r.posted for r in group]
        first = [r.first_started_recv - r.posted for r in group]
        done = [r.final_recv - r.posted for r in group]
        return [label, len(group), ms(pct(accept, 50)), ms(pct(accept, 95)), ms(pct(first, 50)), ms(pct(first, 95)),
                ms(pct(done, 50)), ms(pct(done, 95)), ms(max(done) if done else None)]

    cold = [r for r in results[:1] if r.ok]
    warm = [r for r in results[1:] if r.ok]
    note = "" if len(results) == runs else f"; stopped after {len(results)} runs: --budget-a {budget_s:.0f} s"
    lines = [table(["run", "n", "202 p50", "202 p95", "1st node p50", "1st node p95", "done p50", "done p95",
                    "done max"],
                   [row("cold (1st after start)", cold), row("warm", warm)],
                   title=f"(a) latency of a 3-node run (start -> transform -> end), ms from POST execute "
                         f"[{served.name} event log, {runs} runs one after the other{note}]")]
    if cold:
        c = cold[0]
        lines.append(f"cold run: accept {ms(c.accepted - c.posted, 0)} ms, engine start "
                     f"{ms(c.first_started_pub - c.posted, 0)} ms, run {ms(c.final_pub - c.first_started_pub, 0)}"
                     f" ms, delivery {ms(c.final_recv - c.final_pub, 0)} ms")
    if warm:
        lines.append(table(["warm breakdown, ms (event timestamps, same clock)", "n", "p50", "p95", "max"],
                           phase_rows(warm)))
    if errors:
        lines.append(f"failed: {dict(errors)} (not in the table)")
    lines += [f"serve log: {line}" for line in watch.summary()]
    lines.append(f"during (a): {meter.describe()}")
    lines += [f"during (a): {loop_probe.describe()}", f"during (a): {prefect_probe.describe()}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- (b) throughput


async def bench_concurrent(served: Served, count: int, post_limit: int, prefect_url: str,
                           prefect_pid: int | None) -> str:
    gate = asyncio.Semaphore(post_limit) if post_limit else None
    loop_probe, prefect_probe = probes(served, prefect_url)
    async with api_client(served.base) as client:
        workflow_id = await save_workflow(client, chain_canvas("bench-concurrent", 3))
        with CpuMeter(serve=served.pid, prefect=prefect_pid) as meter, LogWatch(served) as watch:
            async with loop_probe, prefect_probe:
                results = await asyncio.gather(*(execute_and_follow(client, workflow_id, timeout=240, gate=gate,
                                                                    registry=served.run_ids)
                                                 for _ in range(count)))
        ids = [r.execution_id for r in results if r.execution_id]
        statuses = await asyncio.gather(*(stored_status(client, i) for i in ids))
    ok = [r for r in results if r.ok]
    non_202 = Counter(r.error for r in results if r.status_code != 202)
    failed_runs = Counter(r.final_type for r in results if r.final_type not in (None, "execution:completed"))
    stream_errors = Counter(r.error for r in results if r.status_code == 202 and r.error)
    stored_bad = Counter(s for s in statuses if s != "completed")
    first_post = min(r.posted for r in results)
    last_done = max((r.final_recv for r in ok), default=first_post)
    wall = last_done - first_post
    done = [r.final_recv - r.posted for r in ok]
    accept = [r.accepted - r.posted for r in results if r.accepted is not None]
    label = f"{count}, all POSTs at once" if not post_limit else f"{count}, <= {post_limit} POSTs in flight"
    rows = [[label, len(ok), f"{wall:.1f}", f"{len(ok) / wall if wall > 0 else 0:.2f}",
             ms(pct(done, 50)), ms(pct(done, 95)), ms(max(done) if done else None),
             ms(pct(accept, 50)), ms(pct(accept, 95)), sum(non_202.values()), sum(failed_runs.values()),
             sum(stream_errors.values()), sum(stored_bad.values())]]
    lines = [table(["executions", "completed", "wall s", "runs/s", "done p50", "done p95", "done max", "202 p50",
                    "202 p95", "non-202", "failed", "stream err", "stored!=completed"], rows,
                   title=f"(b) concurrent executions of a 5-node chain (start -> t1 -> t2 -> t3 -> end), ms from "
                         f"each POST [{served.name} event log]")]
    lines.append(table(["breakdown, ms (event timestamps)", "n", "p50", "p95", "max"], phase_rows(results)))
    for what, errors in (("non-202", non_202), ("failed runs", failed_runs), ("stream errors", stream_errors),
                         ("stored status", stored_bad)):
        if errors:
            lines.append(f"{what}: {dict(errors)}")
    lines += [f"serve log: {line}" for line in watch.summary()]
    lines.append(f"during (b): {meter.describe()}")
    lines += [f"during (b): {loop_probe.describe()}", f"during (b): {prefect_probe.describe()}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


async def delete_streams(served: Served) -> None:
    """Delete the Redis streams of the runs this benchmark started (they would stay 7 days)."""
    if not served.redis_url or not served.run_ids:
        return
    try:
        import redis.asyncio as redis

        client = redis.Redis.from_url(served.redis_url)
        for start in range(0, len(served.run_ids), 500):
            await client.delete(*(f"flowmaestro:events:{i}" for i in served.run_ids[start:start + 500]))
        await client.aclose()
    except Exception as exc:  # cleanup only
        print(f"(could not delete the benchmark's Redis streams: {exc})", file=sys.stderr)


def code_fingerprint() -> str:
    import hashlib

    digest = hashlib.sha256()
    for folder in ("api", "flows", "builder", "node_handlers"):
        for path in sorted((ROOT / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


async def main_async(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    only = set(args.only.split(",")) if args.only else {"latency", "concurrent"}
    prefect_url = prefect_api_url()
    prefect_port = httpx.URL(prefect_url).port
    prefect_pid = pid_listening_on(prefect_port) if prefect_port else None
    redis_url = (args.redis_url or DEFAULT_REDIS) if args.redis else None
    runs = args.runs or (10 if args.quick else 50)
    budget = args.budget_a or (30 if args.quick else 90)
    count = args.concurrent or (20 if args.quick else 100)
    limits = [int(x) for x in (args.post_limits or ("0" if args.quick else "0,10")).split(",")]
    print(f"FlowMaestro API benchmark: Prefect {prefect_url} (pid {prefect_pid or '?'}), event log "
          f"{'Redis ' + redis_url if redis_url else 'SQL (SQLite)'}, code {code_fingerprint()}, "
          f"{os.cpu_count()} CPUs, load average {loadavg()}", flush=True)
    t = time.perf_counter()
    served = await asyncio.to_thread(start_serve, "redis" if redis_url else "sql", prefect_url, redis_url=redis_url)
    print(f"serve process pid {served.pid} healthy after {time.perf_counter() - t:.1f} s\n", flush=True)
    try:
        if "latency" in only:
            print(await bench_latency(served, runs, budget, prefect_url, prefect_pid) + "\n", flush=True)
        if "concurrent" in only:
            for limit in limits:
                print(await bench_concurrent(served, count, limit, prefect_url, prefect_pid) + "\n", flush=True)
    except Exception:
        print(f"--- serve log tail ---\n{served.log_tail()}", file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(served.stop)
        await delete_streams(served)
        if not args.keep:
            shutil.rmtree(served.home, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s" + (f"; serve home kept: {served.home}" if args.keep else ""),
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 sequential runs (30 s at most), 20 concurrent")
    parser.add_argument("--only", default="", help="latency,concurrent (default both)")
    parser.add_argument("--runs", type=int, default=0, help="sequential runs for (a) (default 50)")
    parser.add_argument("--budget-a", type=float, default=0, help="stop (a) after this many seconds (default 90)")
    parser.add_argument("--concurrent", type=int, default=0, help="concurrent executions for (b) (default 100)")
    parser.add_argument("--post-limits", default="", help="rounds of (b): POSTs in flight at once, 0 = all "
                        "(default 0,10; quick 0)")
    parser.add_argument("--redis", action="store_true", help="event log in Redis (FLOWMAESTRO_REDIS_URL)")
    parser.add_argument("--redis-url", default=None, help=f"Redis URL for --redis (default {DEFAULT_REDIS})")
    parser.add_argument("--keep", action="store_true", help="keep the serve process's temporary home (its log)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
