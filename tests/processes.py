"""Real processes for the tests that need them: `flowmaestro serve`, `flowmaestro worker`,
a Prefect server on PostgreSQL, throwaway PostgreSQL databases, and a local HTTP server
that counts the requests it gets (side effects a crash must not repeat)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tests.ports import free_port

if TYPE_CHECKING:
    from flows.local_server import ServerInfo

ROOT = Path(__file__).resolve().parent.parent
PG_HOST = os.environ.get("FLOWMAESTRO_TEST_PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("FLOWMAESTRO_TEST_PG_USER", "postgres")


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", PG_HOST, "-U", PG_USER, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
        check=True,
        capture_output=True,
    )


@contextmanager
def postgres_database(prefix: str = "fm_test") -> Iterator[str]:
    """A new PostgreSQL database for the block; its asyncpg SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:5432/{name}"
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def prefect_on_postgres(home: Path) -> Iterator[ServerInfo]:
    """A Prefect server of its own on a new PostgreSQL database (several workers write to it
    at once; Prefect on SQLite is one writer at a time)."""
    from flows.local_server import start_server, stop

    with postgres_database("fm_prefect") as url:
        info = start_server(home, free_port(), env={"PREFECT_SERVER_DATABASE_CONNECTION_URL": url}, auth=False)
        try:
            yield info
        finally:
            stop(home)


def stack_env(home: Path, prefect: ServerInfo, database_url: str, api_key: str, **extra: str) -> dict[str, str]:
    """The environment every process of one FlowMaestro installation shares: its Prefect
    server, the store and event log on PostgreSQL, Redis, one result storage, one lock
    manager, loopback allowed for http nodes, and a work pool of its own (several
    installations share the session's Prefect servers: a pool's workers must find only its
    runs, and its crash-recovery automations are the pool's)."""
    return {
        **os.environ,
        "PREFECT_API_URL": prefect.api_url,
        "FLOWMAESTRO_HOME": str(home),
        "FLOWMAESTRO_WORK_POOL": f"stack-{uuid.uuid4().hex[:8]}",
        "FLOWMAESTRO_DATABASE_URL": database_url,
        "FLOWMAESTRO_API_KEYS": f"tester:{api_key}",
        "FLOWMAESTRO_REDIS_URL": "redis://127.0.0.1:6379/0",
        "FLOWMAESTRO_HTTP_ALLOW_HOSTS": "127.0.0.1",
        "FLOWMAESTRO_CACHE_LOCK_REDIS_URL": "redis://127.0.0.1:6379/1",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_HOME": str(home / "prefect-client"),
        **extra,
    }  # extra may replace any of them (a private Redis, say)


def wait_until(check, *, timeout: float, interval: float = 0.2, what: str = "the condition"):
    """Poll ``check()`` until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class Proc:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.args, self.log = args, log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the whole group: nothing of it gets to clean up."""
        self.signal_group(signal.SIGKILL)
        self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL if it does not end within ``timeout``."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log_file.close()
        return self.process.returncode


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def embedded_env(home: Path, key: str) -> dict[str, str]:
    """The environment of ``flowmaestro serve`` on the embedded default: no PREFECT_API_URL
    (serve starts Prefect itself, under ``home``), owner ``bob`` with ``key``, a pool of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env.update(
        FLOWMAESTRO_HOME=str(home),
        FLOWMAESTRO_API_KEYS=f"bob:{key}",
        FLOWMAESTRO_SERVER_PORT=str(free_port()),
        FLOWMAESTRO_WORK_POOL=f"embedded-{uuid.uuid4().hex[:6]}",
        FLOWMAESTRO_WORKER_GRACE_S="2",
        PREFECT_HOME=str(home / "prefect-client"),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "results"),
    )
    return env


def start_serve(
    home: Path, env: dict[str, str], *, workers: int = 1, port: int | None = None, timeout: float = 120
) -> tuple[Proc, str]:
    """``flowmaestro serve`` answering ``/health`` within ``timeout`` (an embedded Prefect
    server's first start takes longer than the default allows); the process and its URL."""
    port = port or free_port()
    proc = Proc(cli("serve", "--port", str(port), "--workers", str(workers)), env, home / f"serve-{port}.log")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.alive(), proc.output()
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=timeout, what="flowmaestro serve answering /health")
    return proc, base


def start_worker(home: Path, env: dict[str, str], *, name: str, limit: int = 20, pool: str | None = None) -> Proc:
    args = cli("worker", "--name", name, "--limit", str(limit)) + (["--pool", pool] if pool else [])
    proc = Proc(args, env, home / f"worker-{name}.log")
    wait_until(lambda: "started" in proc.output() or not proc.alive(), timeout=120, what=f"worker {name} starting")
    assert proc.alive(), proc.output()
    return proc


class _BusyHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) drops the connections of a wide fan-out
    daemon_threads = True


class CountingServer:
    """A local HTTP server that counts requests per path and answers
    ``{"path": ..., "count": n}`` after an optional delay (``?delay=0.5``), with the request's
    headers under ``headers`` for ``?echo=1``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.requests: list[dict[str, object]] = []
        """Every request: path, its Idempotency-Key, when it arrived and was answered (wall clock)."""
        self.failing: set[str] = set()
        """Paths answered 500 for now."""
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                self._answer()

            def _answer(self) -> None:
                path, _, query = self.path.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                record = {"path": path, "key": self.headers.get("idempotency-key"), "at": time.time()}
                with outer.lock:
                    outer.counts[path] += 1
                    count = outer.counts[path]
                    outer.requests.append(record)
                    failing = path in outer.failing
                delay = float(params.get("delay", 0))
                if delay:
                    time.sleep(delay)
                answer: dict[str, object] = {"path": path, "count": count}
                if "echo" in params:  # as servers do: what was sent comes back (secrets must not)
                    answer["headers"] = dict(self.headers)
                body = json.dumps(answer).encode()
                try:
                    self.send_response(500 if failing else 200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the caller was killed meanwhile
                    return
                record["answered"] = time.time()

            def log_message(self, *args: object) -> None:
                pass

        self.server = _BusyHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
