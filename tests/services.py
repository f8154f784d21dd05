"""Private PostgreSQL and Redis servers for the tests that stop them: each on its own port and
data directory, started and stopped for real (signals to the server's process group), so the
rest of the suite keeps the machine's services."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.processes import Proc, free_port, wait_until


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[-1]


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb) on its own port, trusting local connections.

    PostgreSQL refuses to run as root: as root, its commands run as the ``postgres`` user
    (which Debian's package creates) and the data directory is that user's."""

    def __init__(self, root: Path):
        """``root``: where its log goes. The cluster itself lives in a directory of its own
        under the system's temp dir, which the postgres user can reach (pytest's is root's
        alone); ``stop()`` removes it."""
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="flowmaestro-pg-"))
        self.data = self.dir / "data"
        self.proc: Proc | None = None
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        done = subprocess.run(
            self._as + [_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"initdb failed: {done.stderr}"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        # fsync off: a crash of the OS is not what these tests are about; a killed server is.
        self.proc = Proc(
            self._as
            + [
                _postgres_bin("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
            dict(os.environ),
            self.root / "postgres.log",
        )
        wait_until(self.answers, timeout=60, what="the private PostgreSQL accepting connections")

    def answers(self) -> bool:
        assert self.proc is not None and self.proc.alive(), self.proc and self.proc.output()
        return (
            subprocess.run([_postgres_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode == 0
        )

    def _signal_all(self, signum: int) -> None:
        """To the server and every backend: backends make themselves process group leaders
        (setsid), so a signal to the server's group does not reach them."""
        assert self.proc is not None
        for pid in _descendants(self.proc.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        self.proc.signal_group(signum)

    def kill(self) -> None:
        """SIGKILL to the server and its backends: no shutdown, crash recovery at the next start."""
        assert self.proc is not None
        self._signal_all(signal.SIGKILL)
        self.proc.process.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the server accepts TCP connections (the kernel does) and answers nothing."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.stop(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    """A redis-server on its own port that keeps its data across a kill (append-only file,
    fsync on every write), as a production event log must."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.proc: Proc | None = None
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = Proc(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            dict(os.environ),
            self.root / "redis.log",
        )
        wait_until(self.answers, timeout=30, what="the private Redis answering")

    def answers(self) -> bool:
        assert self.proc is not None and self.proc.alive(), self.proc and self.proc.output()
        out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
        return out.stdout.strip() == "PONG"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.signal_group(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.resume()
            self.proc.stop(timeout=30)
