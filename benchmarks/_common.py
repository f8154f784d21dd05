"""Helpers shared by the run-time benchmarks (``engine.py``, ``containers.py``).

Import order matters: Prefect reads ``PREFECT_API_URL`` when it is imported, so a
benchmark calls :func:`prepare_prefect` before importing ``prefect`` or ``flows.flow``.
Nothing in this module imports Prefect at import time.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

TERMINAL_STATES = ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]

_server_pid: int | None = None


def prepare_prefect(quiet: bool = True) -> Any:
    """Point this process at a real Prefect server (``PREFECT_API_URL`` if set and
    healthy, else the embedded one under ``FLOWMAESTRO_HOME``, started if needed) and
    quieten Prefect's per-run log lines. Call it before importing prefect."""
    global _server_pid
    if "prefect" in sys.modules:
        raise RuntimeError("prepare_prefect() must run before prefect is imported")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    from flows.local_server import ensure_server
    from flows.settings import EngineSettings

    global _server_log
    info = ensure_server(quiet=quiet)
    _server_pid = info.pid
    home = EngineSettings().home
    try:  # an external URL may still be our embedded server: then we know its pid and log
        state = json.loads((home / "prefect-server.json").read_text())
        if state.get("api_url") == info.api_url:
            _server_pid = _server_pid or state.get("pid")
            _server_log = home / "prefect-server.log"
    except (OSError, ValueError):
        pass
    return info


_server_log: Path | None = None
DROP_MARKER = b"Subscription queue is full, dropping message"


def server_log_offset() -> int | None:
    """Current size of the embedded server's log (None when we do not know its log)."""
    if _server_log is None:
        return None
    try:
        return _server_log.stat().st_size
    except OSError:
        return None


def server_log_drops(since: int | None) -> int | None:
    """How many 'Subscription queue is full, dropping message' warnings the server logged
    after offset ``since``: events its in-memory broker threw away."""
    if since is None or _server_log is None:
        return None
    try:
        with _server_log.open("rb") as f:
            f.seek(since)
            return f.read().count(DROP_MARKER)
    except OSError:
        return None


_fm_flows: dict[tuple[bool, tuple[Any, ...]], Any] = {}


def fm_flow(inline: bool, listeners: tuple[Any, ...] = ()) -> Any:
    """The generic flow bound to a context that runs control nodes inline (the default) or as
    full task runs, with ``listeners``; one per combination, so runs share an event log as the
    runs of one API process do."""
    key = (inline, listeners)
    if key not in _fm_flows:
        from flows.flow import workflow_flow
        from flows.run_context import RunContext
        from flows.settings import EngineSettings

        context = RunContext.from_environment(listeners=listeners)
        context = replace(context, settings=EngineSettings(inline_control_nodes=inline))
        _fm_flows[key] = workflow_flow(context)
    return _fm_flows[key]


# --------------------------------------------------------------------------- server load


def server_cpu_s() -> float | None:
    """CPU seconds used so far by the Prefect server process (when it runs on this host)."""
    if _server_pid is None:
        return None
    try:
        fields = Path(f"/proc/{_server_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


_idle_level: float | None = None


async def server_idle_level(window: float = 0.5, samples: int = 6) -> float | None:
    """The server's CPU use (fraction of a core) when nothing of ours runs: its own
    background services, and whatever others send it (the least of a few windows)."""
    global _idle_level
    if _idle_level is None:
        levels = []
        for _ in range(samples):
            before = server_cpu_s()
            if before is None:
                return None
            await asyncio.sleep(window)
            levels.append(max(0.0, ((server_cpu_s() or before) - before) / window))
        _idle_level = min(levels)
    return _idle_level


async def wait_server_idle(threshold: float | None = None, window: float = 0.3, timeout: float = 10.0) -> float:
    """Wait until the server uses less than ``threshold`` of a core (default: its idle
    level + 0.1) over ``window`` seconds (its recorder has drained), so one measurement
    does not pay for the last; at most ``timeout`` seconds."""
    started = time.monotonic()
    if server_cpu_s() is None:
        await asyncio.sleep(0.5)
        return time.monotonic() - started
    if threshold is None:
        threshold = max(0.15, (await server_idle_level() or 0.0) + 0.1)
        started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = server_cpu_s()
        await asyncio.sleep(window)
        after = server_cpu_s()
        if before is None or after is None or (after - before) / window < threshold:
            break
    return time.monotonic() - started


def code_fingerprint(*dirs: str) -> str:
    """A short hash of the engine's source files, to tell which state of a tree that
    others edit concurrently was measured."""
    import hashlib

    digest = hashlib.sha256()
    for d in dirs:
        for path in sorted((ROOT / d).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------- task runs in the API


def _flow_run_filter(flow_run_id: str) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))


async def count_task_runs(client: Any, flow_run_id: str, terminal_only: bool = True) -> int:
    """One ``POST /task_runs/count`` (cheap; used for polling)."""
    body: dict[str, Any] = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    if terminal_only:
        body["task_runs"] = {"state": {"type": {"any_": TERMINAL_STATES}}}
    response = await client._client.post("/task_runs/count", json=body)
    return int(response.json())


async def read_all_task_runs(client: Any, flow_run_id: str, page: int = 200) -> list[Any]:
    """Every task run of a flow run via ``read_task_runs``, paginated by ``page`` (the
    API's maximum), deduplicated by id."""
    from prefect.client.schemas.sorting import TaskRunSort

    seen: dict[Any, Any] = {}
    offset = 0
    while True:
        runs = await client.read_task_runs(
            flow_run_filter=_flow_run_filter(flow_run_id),
            limit=page,
            offset=offset,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
        for run in runs:
            seen[run.id] = run
        if len(runs) < page:
            return list(seen.values())
        offset += page


async def wait_task_runs_visible(
    flow_run_id: str, expected: int, timeout: float = 60.0, poll: float = 0.25
) -> tuple[float | None, int]:
    """Poll until ``expected`` task runs of the flow run are in a final state in the API.
    Returns (seconds waited or None on timeout, count seen)."""
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    count = 0
    async with get_client() as client:
        while True:
            count = await count_task_runs(client, flow_run_id)
            if count >= expected:
                return time.monotonic() - started, count
            if time.monotonic() - started > timeout:
                return None, count
            await asyncio.sleep(poll)


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float
    client_cpu: float
    server_cpu: float | None = None
    visible_after: float | None = None
    """Seconds after the run returned until all its task runs were visible in the API."""
    task_runs_seen: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    scenario: str
    variant: str
    nodes: int
    critical_s: float
    samples: list[Sample] = field(default_factory=list)
    expected_task_runs: int | None = None

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.wall - self.critical_s) / self.nodes * 1000

    def median_of(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else None


Runner = Callable[[], Awaitable[str | None]]
"""One run of a variant; returns the Prefect flow run id, if any."""


async def measure(
    runner: Runner,
    *,
    check_task_runs: int | None = None,
    settle: bool = True,
    visible_timeout: float = 30.0,
    idle_timeout: float = 3.0,
) -> Sample:
    """Time one run (wall and client CPU, plus the server's CPU while it ran); then,
    outside the timing, settle: wait until its ``check_task_runs`` task runs are final in
    the API (the recorder's backlog of this run is gone; reported as ``visible_after``),
    then until the server's CPU is back near idle (at most ``idle_timeout`` s)."""
    server_before = server_cpu_s()
    cpu_before = time.process_time()
    started = time.perf_counter()
    flow_run_id = await runner()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    server_after = server_cpu_s()
    sample = Sample(wall, cpu, None if server_before is None or server_after is None else server_after - server_before)
    if flow_run_id and check_task_runs:
        sample.visible_after, sample.task_runs_seen = await wait_task_runs_visible(
            flow_run_id, check_task_runs, timeout=visible_timeout
        )
    if settle and flow_run_id:
        await wait_server_idle(timeout=idle_timeout)
    return sample


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(value: float | None, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


# --------------------------------------------------------------------------- memory


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident set size of a process in MB (Linux /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def server_rss_mb() -> float | None:
    return None if _server_pid is None else rss_mb(_server_pid)


class PeakRSS:
    """Samples this process's RSS in a background thread while the block runs:
    ``peak - before`` is the memory the block needed at its worst (MB)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.before = self.peak = self.after = 0.0
        self._stop = None
        self._thread = None

    def __enter__(self) -> PeakRSS:
        import threading

        self.before = self.peak = rss_mb() or 0.0
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, rss_mb() or 0.0)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.after = rss_mb() or 0.0
        self.peak = max(self.peak, self.after)

    @property
    def delta(self) -> float:
        return self.peak - self.before
