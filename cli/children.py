"""Worker processes that ``flowmaestro serve`` starts beside the API and stops with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from flows.child_environment import worker_environment

STOP_TIMEOUT_S = 60


class Children:
    def __init__(self, processes: list[subprocess.Popen[bytes]]):
        self.processes = processes

    def pids(self) -> str:
        return ", ".join(str(p.pid) for p in self.processes)

    @classmethod
    @contextmanager
    def workers(cls, count: int, *, pool: str, env: Mapping[str, str] | None = None) -> Iterator[Children]:
        """``count`` ``flowmaestro worker`` processes for the block. Each gets its own process
        group: the terminal's Ctrl-C reaches the API, which then stops them in order.
        ``env``: variables the workers get on top of this process's environment (the
        approval decision key)."""
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--pool", pool, "--name", f"serve-{os.getpid()}-{index}"],
                start_new_session=True,
                env=worker_environment({**os.environ, **(env or {})}),
            )  # not the API's keys
            for index in range(count)
        ]
        children = cls(processes)
        try:
            yield children
        finally:
            children.stop()

    def stop(self) -> None:
        """SIGTERM (a worker lets its runs finish), then SIGKILL after ``STOP_TIMEOUT_S``."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
