"""Worker processes that ``flowmaestro serve`` starts beside the API, keeps alive and stops
with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from flows.child_environment import worker_environment

STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class Backoff:
    """How long ``serve`` waits before starting a worker again that died: ``first_s``,
    doubled at each death in a row, at most ``max_s``; a worker that stayed up ``stable_s``
    starts the count again (a worker that dies at start must not be restarted in a loop)."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_s: float = 60.0

    def delay(self, deaths_in_a_row: int) -> float:
        return float(min(self.first_s * 2.0 ** max(deaths_in_a_row - 1, 0), self.max_s))


class Children:
    def __init__(
        self,
        start: Callable[[int], subprocess.Popen[bytes]],
        count: int,
        *,
        log: Callable[[str], None] = print,
        backoff: Backoff = Backoff(),
        check_s: float = 0.5,
    ):
        self._start = start
        self.processes = [start(index) for index in range(count)]
        self._log, self._backoff, self._check_s = log, backoff, check_s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
        if count:
            self._supervisor.start()

    def pids(self) -> str:
        with self._lock:
            return ", ".join(str(p.pid) for p in self.processes)

    @classmethod
    @contextmanager
    def workers(
        cls,
        count: int,
        *,
        pool: str,
        env: Mapping[str, str] | None = None,
        log: Callable[[str], None] = print,
        backoff: Backoff = Backoff(),
    ) -> Iterator[Children]:
        """``count`` ``flowmaestro worker`` processes for the block, each started again (with
        ``backoff``) when it dies, saying so through ``log``. Each gets its own process
        group: the terminal's Ctrl-C reaches the API, which then stops them in order.
        ``env``: variables the workers get on top of this process's environment (the
        approval decision key)."""

        def start(index: int) -> subprocess.Popen[bytes]:
            environ = worker_environment({**os.environ, **(env or {})})  # not the API's keys
            return subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--pool", pool, "--name", f"serve-{os.getpid()}-{index}"],
                start_new_session=True,
                env=metrics_port_of(environ, index),
            )

        children = cls(start, count, log=log, backoff=backoff)
        try:
            yield children
        finally:
            children.stop()

    def _supervise(self) -> None:
        """Restart every worker that exits while ``serve`` runs: without it, its runs would
        wait for crash detection and new runs for nobody."""
        deaths = [0] * len(self.processes)
        started = [time.monotonic()] * len(self.processes)
        while not self._stopping.wait(self._check_s):
            for index, process in enumerate(list(self.processes)):
                code = process.poll()
                if code is None:
                    if time.monotonic() - started[index] >= self._backoff.stable_s:
                        deaths[index] = 0
                    continue
                deaths[index] += 1
                delay = self._backoff.delay(deaths[index])
                self._log(
                    f"worker serve-{os.getpid()}-{index} (pid {process.pid}) exited with code {code}; "
                    f"starting another in {delay:g} s"
                )
                if self._stopping.wait(delay):
                    return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.processes[index] = self._start(index)
                    started[index] = time.monotonic()
                self._log(f"worker serve-{os.getpid()}-{index} started again (pid {self.processes[index].pid})")

    def stop(self) -> None:
        """SIGTERM (a worker lets its runs finish, then hands the rest back), then SIGKILL
        after ``STOP_TIMEOUT_S``. No worker is started again from now on."""
        self._stopping.set()
        with self._lock:
            processes = list(self.processes)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._supervisor.is_alive():
            self._supervisor.join(5)


def metrics_port_of(environ: dict[str, str], index: int) -> dict[str, str]:
    """Worker ``index``'s environment: its own metrics port, the next after the one before
    (``FLOWMAESTRO_WORKER_METRICS_PORT`` is the first worker's)."""
    port = environ.get("FLOWMAESTRO_WORKER_METRICS_PORT", "").strip()
    if port.isdigit() and int(port) > 0:
        return {**environ, "FLOWMAESTRO_WORKER_METRICS_PORT": str(int(port) + index)}
    return environ
