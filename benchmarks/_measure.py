"""How ``benchmarks/api.py`` looks at what it runs: statistics and tables, the result of a
part, CPU time of processes (and of the whole machine), probes of an event loop or of the
Prefect API, and what the processes logged (exceptions, retries, Prefect's requests).

Nothing here imports Prefect.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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


def spread_row(name: str, values: list[float]) -> list[Any]:
    """[name, n, p50, p95, max] in ms."""
    return [name, len(values), ms(pct(values, 50)), ms(pct(values, 95)), ms(max(values) if values else None)]


@dataclass
class PathResult:
    """N runs of the 5-node chain started at once along one path, as the comparison needs them."""

    path: str
    count: int
    completed: int
    errors: int
    """Requests refused and runs that ended otherwise than completed."""
    lost: int
    """Runs accepted that never reached a final state."""
    wall_s: float
    """First request sent -> last run completed."""
    accept: list[float] = field(default_factory=list)
    """Request -> answer (POST -> 202, the create call, the in-process flow run created)."""
    first_step: list[float] = field(default_factory=list)
    """Request -> first node (task) started."""
    done: list[float] = field(default_factory=list)
    """Request -> completed."""
    phases: list[tuple[str, list[float]]] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)
    """CPU of the processes involved, per window of the part (the requests, the runs after)."""
    notes: list[str] = field(default_factory=list)
    """The rest worth printing: CPU over the whole part, probes, Prefect requests."""
    cpu_per_run: dict[str, float] = field(default_factory=dict)
    """CPU seconds per completed run, by process group (``client``: the benchmark itself)."""
    others_share: float | None = None
    """The part of the machine's CPU that others used meanwhile (0..1)."""
    client_runs: bool = False
    """The benchmark's own process ran the runs (in-process): its CPU is the path's."""
    wall_prefect_s: float | None = None
    """First request sent -> last run Completed in Prefect (FlowMaestro's runs are completed
    for their clients a little before: the worker then stores the result and ends the flow run)."""

    @property
    def runs_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_total_per_run(self) -> float | None:
        """CPU seconds per run of the path's own processes (the benchmark's only when it ran them)."""
        used = [u for name, u in self.cpu_per_run.items() if name != "client" or self.client_runs]
        return sum(used) if used else None

    @property
    def runs_per_s_prefect(self) -> float | None:
        return self.completed / self.wall_prefect_s if self.wall_prefect_s else None

    def phase_table(self, title: str) -> str:
        return table([title, "n", "p50", "p95", "max"], [spread_row(name, v) for name, v in self.phases])

    def report(self, part: str, title: str) -> str:
        """The breakdown, then the CPU and notes, each line marked with the part."""
        return "\n".join(
            [
                self.phase_table(title),
                *(f"CPU during {part}: {line}" for line in self.cpu),
                *(f"during {part}: {line}" for line in self.notes),
            ]
        )


def cpu_fields(meter: CpuMeter, completed: int) -> dict[str, Any]:
    """The ``PathResult`` fields a part's ``CpuMeter`` gives."""
    others = meter.others()
    capacity = meter.wall * (os.cpu_count() or 1)
    return {
        "cpu_per_run": meter.per_run(completed),
        "others_share": None if others is None or capacity <= 0 else others / capacity,
    }


def deltas(pairs: list[tuple[float | None, float | None]]) -> list[float]:
    """b - a for each pair where both are known."""
    return [b - a for a, b in pairs if a is not None and b is not None]


# ----------------------------------------------------------------------------- processes and CPU


def _stat(pid: int | str) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    return head.partition("(")[2], rest.split()


def cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by a process."""
    if pid is None:
        return None
    stat = _stat(pid)
    if stat is None:
        return None
    fields = stat[1]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores: not idle, not waiting on I/O)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


@dataclass(frozen=True)
class Procs:
    """Processes whose CPU time is added up: ``pids`` (and their descendants, when ``tree``),
    or every process whose command line contains one of ``match`` (a PostgreSQL backend
    shows its database there)."""

    pids: tuple[int, ...] = ()
    tree: bool = False
    match: tuple[str, ...] = ()

    def members(self) -> list[int]:
        if self.match:
            found = []
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and any(
                        m in (proc / "cmdline").read_text(errors="replace") for m in self.match
                    ):
                        found.append(int(proc.name))
                except OSError:
                    continue
            return found
        if not self.tree:
            return list(self.pids)
        children: dict[int, list[int]] = {}
        for proc in Path("/proc").iterdir():
            stat = _stat(proc.name) if proc.name.isdigit() else None
            if stat is not None:
                children.setdefault(int(stat[1][1]), []).append(int(proc.name))
        found, todo = [], list(self.pids)
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def snapshot(self) -> dict[int, float]:
        """CPU seconds so far, per member."""
        used = {pid: cpu_s(pid) for pid in self.members()}
        return {pid: u for pid, u in used.items() if u is not None}

    def cpu_s(self) -> float | None:
        snapshot = self.snapshot()
        return sum(snapshot.values()) if snapshot else None


def cpu_between(before: dict[int, float] | None, after: dict[int, float] | None) -> float | None:
    """CPU used between two snapshots: what each process alive at the end used since the
    first (all of it, for one that started meanwhile); one that ended meanwhile is missed."""
    if not before and not after:
        return None
    before = before or {}
    return sum(max(0.0, used - before.get(pid, 0.0)) for pid, used in (after or {}).items())


class CpuMeter:
    """CPU seconds used by some processes while a block runs, and the wall time. Each
    name is given a pid, a ``Procs`` or None (not measured)."""

    def __init__(self, **procs: int | Procs | None):
        self.procs = {name: Procs((p,)) if isinstance(p, int) else p for name, p in procs.items()}
        self.used: dict[str, float | None] = {}
        self.wall = 0.0

    def __enter__(self) -> CpuMeter:
        self._before = {name: p.snapshot() if p else None for name, p in self.procs.items()}
        self._own = time.process_time()
        self._machine = machine_busy_s()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._t
        for name, p in self.procs.items():
            self.used[name] = cpu_between(self._before[name], p.snapshot()) if p else None
        self.used["client"] = time.process_time() - self._own
        after = machine_busy_s()
        self.machine = None if after is None or self._machine is None else after - self._machine
        """CPU seconds the whole machine was busy meanwhile (every process, others' too)."""

    def others(self) -> float | None:
        """CPU seconds used meanwhile by processes not measured here (other users of the machine)."""
        if self.machine is None:
            return None
        return max(0.0, self.machine - sum(u for u in self.used.values() if u is not None))

    def per_run(self, runs: int) -> dict[str, float]:
        return {name: u / runs for name, u in self.used.items() if u is not None and runs}

    def describe(self) -> str:
        parts = [f"wall {self.wall:.1f} s"]
        for name, used in self.used.items():
            if used is not None:
                parts.append(f"{name} CPU {used:.1f} s ({used / self.wall * 100:.0f}% of a core)")
        others = self.others()
        if others is not None and self.wall > 0:
            parts.append(
                f"other processes of the machine {others:.1f} s ({others / self.wall * 100:.0f}% of a "
                f"core, of {os.cpu_count()})"
            )
        return ", ".join(parts) + f"; load average {loadavg()}"


class CpuTimeline:
    """Samples the CPU time of some processes every ``interval`` seconds while a block runs,
    so the CPU of a window inside it (the burst of POSTs, the runs after) can be told apart
    from the rest (``used_between``)."""

    def __init__(self, interval: float = 0.25, **procs: int | Procs | None):
        self.interval = interval
        self.procs = {name: Procs((p,)) if isinstance(p, int) else p for name, p in procs.items() if p}
        self.samples: list[tuple[float, dict[str, dict[int, float]]]] = []

    def _sample(self) -> None:
        self.samples.append((time.time(), {name: p.snapshot() for name, p in self.procs.items()}))

    async def __aenter__(self) -> CpuTimeline:
        self._stop = asyncio.Event()
        self._sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._stop.set()
        await self._task
        self._sample()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                self._sample()

    def used_between(self, t0: float, t1: float) -> tuple[float, dict[str, float | None]]:
        """(the window actually measured, in s; CPU seconds per name): from the last sample
        at or before ``t0`` to the first at or after ``t1``."""
        if not self.samples:
            return 0.0, {}
        before = max((s for s in self.samples if s[0] <= t0), default=self.samples[0], key=lambda s: s[0])
        after = min((s for s in self.samples if s[0] >= t1), default=self.samples[-1], key=lambda s: s[0])
        used = {name: cpu_between(before[1].get(name), after[1].get(name)) for name in self.procs}
        return after[0] - before[0], used

    def describe(self, t0: float, t1: float) -> str:
        wall, used = self.used_between(t0, t1)
        parts = [f"{name} {u:.1f} s ({u / wall * 100:.0f}%)" for name, u in used.items() if u is not None and wall > 0]
        return f"{wall:.1f} s: " + ", ".join(parts)


class Probe:
    """Times one cheap request every ``interval`` seconds while a block runs: ``GET /docs`` of
    the serve process (static: its answer time is how long its event loop was busy) or
    ``POST /flow_runs/count`` of the Prefect server (one query: how responsive Prefect was)."""

    def __init__(self, name: str, method: str, url: str, interval: float = 0.25, body: Any = None):
        self.name, self.method, self.url, self.interval, self.body = name, method, url, interval, body
        self.times: list[float] = []
        self.failures = 0

    async def __aenter__(self) -> Probe:
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
                except TimeoutError:
                    pass

    def describe(self) -> str:
        t = self.times
        return (
            f"{self.name}: {len(t)} probes, p50 {ms(pct(t, 50), 0)} ms, p95 {ms(pct(t, 95), 0)} ms, "
            f"max {ms(max(t) if t else None, 0)} ms" + (f", {self.failures} failed" if self.failures else "")
        )


def prefect_probe(prefect_url: str) -> Probe:
    return Probe("Prefect API (POST /flow_runs/count)", "POST", f"{prefect_url.rstrip('/')}/flow_runs/count", body={})


async def settle(procs: Procs | None, threshold: float = 0.15, window: float = 0.5, timeout: float = 20.0) -> float:
    """Wait until ``procs`` (the Prefect server) use less than ``threshold`` of a core over
    ``window`` seconds, so one part does not pay for the backlog of the last; seconds waited."""
    started = time.monotonic()
    while procs is not None and time.monotonic() - started < timeout:
        before = procs.cpu_s()
        await asyncio.sleep(window)
        after = procs.cpu_s()
        if before is None or after is None or (after - before) / window < threshold:
            break
    return time.monotonic() - started


class LogWatch:
    """The exceptions some processes logged while a block ran (from their log files), and
    the requests their Prefect clients retried."""

    PATTERN = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout)): (.{0,140})")

    def __init__(self, *paths: Path):
        self.paths = paths

    def __enter__(self) -> LogWatch:
        self.offsets = [p.stat().st_size if p.exists() else 0 for p in self.paths]
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def summary(self) -> list[str]:
        found: Counter = Counter()
        retries: Counter = Counter()
        for path, offset in zip(self.paths, self.offsets):
            try:
                with path.open("rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                match = self.PATTERN.match(line)
                if match:
                    found[f"{match.group(1)}: {re.sub(r'[0-9a-f-]{36}', '<id>', match.group(2))}"] += 1
                elif "prefect.client" in line and "Another attempt will be made" in line:
                    code = re.search(r"retryable status code (\d+)", line)
                    retries[code.group(1) if code else "exception"] += 1
        # Each unexpected error of the API is logged twice (FlowMaestro's handler, then uvicorn): halve.
        lines = [f"{max(1, n // 2)} x {what}" for what, n in found.most_common(4)]
        if retries:
            lines.append(
                f"Prefect client retried {sum(retries.values())} request(s) after ~2 s backoff: "
                + ", ".join(f"{n} x {code}" for code, n in retries.items())
            )
        return lines


class PrefectRequests:
    """The requests the Prefect server answered while a block ran, by route, from its access
    log (the server the benchmark starts logs at INFO); nothing when its log is unknown."""

    LINE = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api/[^ ?"]*)')
    ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

    def __init__(self, log: Path | None):
        self.path = log

    def __enter__(self) -> PrefectRequests:
        self.offset = self.path.stat().st_size if self.path and self.path.exists() else None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.counts: Counter = Counter()
        if self.path is None or self.offset is None:
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        for match in self.LINE.finditer(text):
            self.counts[f"{match.group(1)} {self.ID.sub('{id}', match.group(2))}"] += 1

    PROBE = "POST /api/flow_runs/count"  # the benchmark's own probe (``prefect_probe``)

    def describe(self, runs: int, top: int = 12) -> str:
        if not self.counts:
            return "Prefect requests: not known (no access log)"
        counts = Counter({route: n for route, n in self.counts.items() if route != self.PROBE})
        total = sum(counts.values())
        parts = ", ".join(f"{route} {n}" for route, n in counts.most_common(top))
        return (
            f"Prefect requests: {total} ({total / max(runs, 1):.1f} per run; and {self.counts[self.PROBE]} of "
            f"the probe); {parts}"
        )
