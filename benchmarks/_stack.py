"""What ``benchmarks/api.py`` (and ``events.py`` through it) runs against: the canvases,
throwaway PostgreSQL databases, a Prefect server on PostgreSQL, and the ``flowmaestro
serve`` / ``flowmaestro worker`` / raw-Prefect worker processes, with the environment they
share (``_measure.py`` is how it looks at them).

Nothing here imports Prefect: the benchmark points ``PREFECT_API_URL`` at its server first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks._measure import Procs
from tests.processes import ROOT, Proc, free_port, postgres_database, wait_until

KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


# ----------------------------------------------------------------------------- ports


def pid_listening_on(port: int) -> int | None:
    """The pid of the local process listening on a TCP port (Linux /proc), if visible."""
    inodes = set()
    for proc_table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(proc_table).read_text().splitlines()[1:]
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


# ----------------------------------------------------------------------------- canvases


def chain_canvas(name: str, middle: int) -> dict[str, Any]:
    """start -> t1 -> ... -> t<middle> -> end (transform nodes)."""
    ids = ["start", *(f"t{i}" for i in range(1, middle + 1)), "end"]
    nodes = [{"id": "start", "type": "start", "data": {}}]
    nodes += [{"id": f"t{i}", "type": "transform", "data": {"output": f"{{{{ {i} }}}}"}} for i in range(1, middle + 1)]
    nodes.append({"id": "end", "type": "end", "data": {"output": f"{{{{ {ids[-2]} }}}}"}})
    edges = [{"id": f"e{i}", "source": a, "target": b} for i, (a, b) in enumerate(zip(ids, ids[1:]))]
    return {"name": name, "nodes": nodes, "edges": edges}


# ----------------------------------------------------------------------------- PostgreSQL and Prefect


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    procs: Procs | None
    """Its processes, when it runs on this host and we know them."""
    log: Path | None = None
    database: str | None = None
    """Its PostgreSQL database, when the benchmark made it."""


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def postgres_backends(*urls_or_names: str | None) -> Procs:
    """The PostgreSQL backends serving these databases (their command lines name them)."""
    names = tuple(f" {database_name(n) if '/' in n else n} " for n in urls_or_names if n)
    return Procs(match=names)


def scaled_out_settings(redis_url: str) -> dict[str, str]:
    """Prefect's settings for an API in several processes beside its services in their own:
    messaging, event ordering and concurrency leases in Redis (``prefect-redis``), as
    ``prefect server start --workers N`` requires."""
    url = httpx.URL(redis_url)
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": url.host or "127.0.0.1",
        "PREFECT_REDIS_MESSAGING_PORT": str(url.port or 6379),
        "PREFECT_REDIS_MESSAGING_DB": url.path.strip("/") or "0",
    }


@contextmanager
def prefect_on_postgres(home: Path, *, api_processes: int = 0, redis_url: str | None = None) -> Iterator[PrefectServer]:
    """A Prefect server of the benchmark's own: its own port, its own PostgreSQL database.
    ``api_processes`` 0: one process, services inside, in-memory messaging (Prefect's
    default); N: N API processes (``--workers N``) and ``prefect server services start``
    in a process of its own, with messaging in Redis at ``redis_url`` (a database the
    benchmark empties before and after: give it one nothing else uses)."""
    from flows.local_server import RECORDER_SETTINGS, start_server, stop  # no Prefect import there

    with postgres_database("fm_bench_prefect") as url, ExitStack() as cleanup:
        # INFO: uvicorn's access log, one line per request (``_measure.PrefectRequests`` counts them).
        env = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url, "PREFECT_SERVER_LOGGING_LEVEL": "INFO"}
        if api_processes:
            if redis_url is None:
                raise ValueError("an API in several processes needs Redis for Prefect's messaging")
            env |= scaled_out_settings(redis_url)
            # The database migrated and the block types registered by one process first: N
            # processes doing it at once on a new database collide ("relation already exists",
            # a duplicate block type slug) and the server stops.
            start_server(home, free_port(), env=env, auth=False, args=("--no-services",))
            stop(home)
            env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
            env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
            messaging = redis.Redis.from_url(redis_url)
            messaging.flushdb()
            cleanup.callback(messaging.flushdb)
        args = ("--workers", str(api_processes), "--no-services") if api_processes else ()
        info = start_server(home, free_port(), env=env, auth=False, args=args)
        cleanup.callback(stop, home)
        pids = [info.pid] if info.pid else []
        if api_processes:
            services_env = dict(
                os.environ,
                **env,
                **RECORDER_SETTINGS,
                PREFECT_HOME=str(home / "prefect"),
                PREFECT_API_URL=info.api_url,
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
            )
            with (home / "prefect-services.log").open("ab") as log:
                services = subprocess.Popen(
                    [sys.executable, "-m", "prefect", "server", "services", "start"],
                    env=services_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            cleanup.callback(_stop_group, services)
            pids.append(services.pid)
        yield PrefectServer(
            info.api_url,
            Procs(tuple(pids), tree=True) if pids else None,
            home / "prefect-server.log",
            database=database_name(url),
        )


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def external_prefect(api_url: str) -> PrefectServer:
    """A Prefect server given by URL; its process is found by its port when it is on this host."""
    port = httpx.URL(api_url).port
    pid = pid_listening_on(port) if port else None
    return PrefectServer(api_url, Procs((pid,), tree=True) if pid else None)


# ----------------------------------------------------------------------------- serve and worker processes


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

    @property
    def log_path(self) -> Path:
        return self.home / "serve.log"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
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


def base_env(
    prefect_url: str,
    home: Path,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment every FlowMaestro process of one benchmark shares: Prefect server,
    home, database (SQLite in the home by default), event log, result storage."""
    # prefect.client at DEBUG logs its retries ("retryable status code 503 ...", counted by LogWatch)
    # and one line per client it connects: a few lines per run.
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_url,
        FLOWMAESTRO_API_KEYS=f"bench:{KEY}",
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_DATABASE_URL=database_url or f"sqlite+aiosqlite:///{home / 'api.db'}",
        PREFECT_LOCAL_STORAGE_PATH=str(home / "results"),
        PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL="DEBUG",
    )
    env.pop("FLOWMAESTRO_REDIS_URL", None)
    if redis_url:
        env["FLOWMAESTRO_REDIS_URL"] = redis_url
    env.update(extra_env or {})
    return env


def start_serve(
    name: str,
    prefect_url: str,
    *,
    redis_url: str | None = None,
    home: Path | None = None,
    extra_env: dict[str, str] | None = None,
    wait: bool = True,
    database_url: str | None = None,
    workers: int | None = None,
) -> Served:
    """Start ``python -m cli serve --port P`` (with ``--workers N`` when given; serve's
    default otherwise): SQLite API database (and SQL event log, unless ``redis_url``) in a
    temporary home unless ``database_url``. Its output goes to ``<home>/serve.log``."""
    home = home or Path(tempfile.mkdtemp(prefix=f"fm-bench-{name}-"))
    port = free_port()
    env = base_env(prefect_url, home, database_url=database_url, redis_url=redis_url, extra_env=extra_env)
    args = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    if workers is not None:
        args += ["--workers", str(workers)]
    with (home / "serve.log").open("ab") as log_file:
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
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


def start_worker(name: str, args: list[str], env: dict[str, str], home: Path) -> Proc:
    """Start ``python ARGS`` from the repository root (a worker), its output in
    ``<home>/worker-<name>.log``; ``wait_started`` waits for it."""
    return Proc([sys.executable, *args], env, home / f"worker-{name}.log")


def wait_started(worker: Proc, timeout: float = 120.0) -> None:
    """Until the worker says it started polling (both kinds of worker print "started")."""

    def started() -> bool:
        if not worker.alive():
            raise RuntimeError(f"worker {worker.args} exited:\n{worker.output()}")
        return "started" in worker.output(20000)

    wait_until(started, timeout=timeout, what=f"worker {worker.args[-1]} starting")


def workers_procs(workers: list[Proc]) -> Procs:
    return Procs(tuple(w.pid for w in workers))
