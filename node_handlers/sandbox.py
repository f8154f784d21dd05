"""The OS sandbox of code nodes: one fresh process per execution, in namespaces of its own.

Each execution is a new ``bwrap`` (bubblewrap) process: new user, PID, network, IPC, UTS and
cgroup namespaces, all capabilities dropped, a network of nothing but a loopback of its own
(nothing listens there), a root of its own that is read-only and holds only ``/usr`` (the
interpreter and its libraries), the operator's allowed package directories (read-only), a
fresh ``/proc`` of its PID namespace, a minimal read-only ``/dev`` and a small tmpfs scratch
directory ``/tmp``. The environment is empty but ``PATH``, ``HOME`` and ``LANG``. Inside,
``prlimit`` sets the limits before the interpreter starts (address space, CPU seconds,
processes and threads, file size, open files), the installation's largest; Python's runner
lowers them to the node's before the code runs. The worker kills the sandbox at the
wall-clock deadline and when its output passes the limit; the PID namespace dies with its
first process, so nothing the code started survives it. A worker running as root starts the
sandbox as an unprivileged user (``code_sandbox_uid``): the kernel does not apply the process
limit to root.

Nothing is reused: a sandbox serves one execution. A few are started ahead (the warm pool):
they have run nothing when they get their request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from node_handlers.sandbox_runners import JAVASCRIPT_RUNNER, PYTHON_RUNNER, RESULT_MARKER
from node_handlers.settings import HandlerSettings

RESULT_MARKER_BYTES = RESULT_MARKER.encode()

Language = Literal["python", "javascript"]

STARTUP_ALLOWANCE_S = 1.0
"""Added to a node's ``timeout_s`` for the wall clock: starting the sandbox and the
interpreter is not the code's time (~20-40 ms, more on a loaded machine)."""
LOG_GRACE_S = 0.2
"""How long the log lines may trail the result: the runner closes them before it writes the
result, so only what a process the code left behind holds open waits this long."""
REAP_GRACE_S = 5.0
"""How long a sandbox may take to end by itself after its result before it is killed."""
KILL_WAIT_S = 10.0
"""How long to wait for a killed sandbox's pipes to close (its PID namespace to die)."""
POOLED_JS_MEMORY_MB = 256
"""JavaScript spares are started with this heap limit (a node's default ``memory_mb``): its
limit is a command-line flag, so a node asking for another starts a sandbox of its own."""
JS_ADDRESS_SPACE_EXTRA_MB = 1024
"""V8 reserves address space it does not use (Node.js does not start under ~1 GB): for
JavaScript ``memory_mb`` bounds the heap and this much more bounds the address space."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float
    memory_mb: int
    max_output_bytes: int
    max_processes: int
    scratch_mb: int


@dataclass(frozen=True)
class SandboxOutcome:
    """What one execution produced: ``output`` when ``ok``, else the error's ``error_type``,
    ``message`` and ``line`` (of the node's code, when known)."""

    ok: bool
    output: Any = None
    error_type: str = ""
    message: str = ""
    line: int | None = None
    logs: tuple[str, ...] = ()


class SandboxUnavailable(Exception):
    """The sandbox cannot be set up on this machine (the message says why)."""


class _OutputLimit(Exception):
    pass


def _split(paths: str) -> list[str]:
    return [os.path.realpath(p.strip()) for p in paths.split(",") if p.strip()]


class CodeSandbox:
    """Runs code nodes with one installation's settings. It keeps nothing between
    executions but whether the sandbox could be set up on this machine (probed once) and,
    a few spare processes per language started ahead (``code_warm_pool``; for JavaScript,
    with the default heap): each serves one execution, and has run nothing before it."""

    def __init__(self, settings: HandlerSettings):
        self.settings = settings
        self._problem: str | None = None
        self._probed = False
        self._probe_lock = asyncio.Lock()
        self._spares: dict[_PoolKey, list[asyncio.subprocess.Process]] = {}
        """Spare sandboxes by event loop (a process's pipes belong to the loop that started it)
        and kind: Python's, or JavaScript's with the default heap (its limit is a flag)."""
        self._starting: dict[_PoolKey, int] = {}
        self._refills: set[asyncio.Future[None]] = set()
        self._closing = False
        self._reaping: set[asyncio.Future[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.settings.code_sandbox == "on"

    async def problem(self) -> str | None:
        """Why the sandbox cannot be set up here, or None when it can (probed once, by
        running the sandbox itself)."""
        if not self.enabled:
            return None
        async with self._probe_lock:
            if not self._probed:
                self._problem = await self._probe()
                self._probed = True
        return self._problem

    async def _probe(self) -> str | None:
        bwrap = shutil.which(self.settings.code_bwrap)
        if bwrap is None:
            return f"bubblewrap ({self.settings.code_bwrap!r}) is not installed (Debian: apt-get install bubblewrap)"
        command = self._sandboxed(["/usr/bin/true"], bwrap=bwrap)
        try:
            process = await asyncio.create_subprocess_exec(
                *self._as_user(),
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env={},
            )
            _, err = await asyncio.wait_for(process.communicate(), 30)
        except (OSError, TimeoutError) as exc:
            return f"bubblewrap could not start: {exc}"
        if process.returncode != 0:
            why = err.decode(errors="replace").strip()[:300] or f"exit status {process.returncode}"
            return f"bubblewrap could not create its namespaces: {why}"
        return None

    def _as_user(self) -> list[str]:
        """Root is exempt from the process limit: a root worker starts sandboxes as another
        user. Through ``setpriv`` rather than subprocess's ``user=``: with it, Python forks the
        whole worker instead of using vfork, which blocks the event loop for ~10-30 ms."""
        if os.geteuid() != 0:
            return []
        uid = self.settings.code_sandbox_uid
        return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]

    def _interpreter(self, language: Language) -> str:
        return self.settings.code_python if language == "python" else self.settings.code_node

    def _inner(self, language: Language, limits: SandboxLimits) -> list[str]:
        """The interpreter under its limits, the installation's largest (a spare is started
        before its node is known): Python's runner lowers them to the node's; for JavaScript
        the heap and address space are the node's, and its wall clock bounds its CPU time."""
        outer = self._largest(limits)
        if language == "python":
            return [*_prlimit(outer, outer.memory_mb), self.settings.code_python, "-I", "-S", "-B", "-c", PYTHON_RUNNER]
        return [
            *_prlimit(outer, limits.memory_mb + JS_ADDRESS_SPACE_EXTRA_MB),
            self.settings.code_node,
            f"--max-old-space-size={limits.memory_mb}",
            "-e",
            JAVASCRIPT_RUNNER,
        ]

    def _largest(self, limits: SandboxLimits) -> SandboxLimits:
        return replace(limits, timeout_s=self.settings.code_max_timeout_s, memory_mb=self.settings.code_max_memory_mb)

    def _mounts(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        # An interpreter outside /usr (/opt/python/bin/python3): its prefix, read-only.
        extra = {
            os.path.dirname(os.path.dirname(os.path.realpath(self._interpreter(language))))
            for language in ("python", "javascript")
        }
        extra.update(_split(self.settings.code_python_paths) + _split(self.settings.code_node_paths))
        for path in sorted(extra):
            if path != "/usr" and not path.startswith("/usr/") and os.path.isdir(path):
                args += ["--ro-bind", path, path]
        return args

    def _sandboxed(self, inner: Sequence[str], *, bwrap: str) -> list[str]:
        node_path = ":".join(_split(self.settings.code_node_paths))
        return [
            bwrap,
            "--unshare-all",  # user, pid, net, ipc, uts, cgroup: the network is an unconfigured loopback
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            *self._mounts(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--remount-ro",  # a tmpfs too: writable, it would hold files beyond the scratch size
            "/dev",
            "--size",
            str(self.settings.code_scratch_mb * 1024 * 1024),
            "--tmpfs",
            "/tmp",
            "--remount-ro",
            "/",
            "--chdir",
            "/tmp",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "LANG",
            "C.UTF-8",
            *(["--setenv", "NODE_PATH", node_path] if node_path else []),
            "--",
            *inner,
        ]

    async def _start(self, language: Language, limits: SandboxLimits) -> _Started:
        """A new sandbox process, waiting for its request on stdin."""
        inner = self._inner(language, limits)
        if self.enabled:
            bwrap = shutil.which(self.settings.code_bwrap) or self.settings.code_bwrap
            process = await _spawn([*self._as_user(), *self._sandboxed(inner, bwrap=bwrap)], env={}, cwd=None, extra={})
            return _Started(process, None)
        # Unsafe by the operator's choice: the limits only, as the worker's user, with its files.
        scratch = tempfile.TemporaryDirectory(prefix="flowmaestro-code-")
        node_path = ":".join(_split(self.settings.code_node_paths))
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch.name, "LANG": "C.UTF-8"}
        env.update({"NODE_PATH": node_path} if node_path else {})
        process = await _spawn(inner, env=env, cwd=scratch.name, extra={"start_new_session": True})
        return _Started(process, scratch)

    async def run(self, language: Language, code: str, inputs: Any, limits: SandboxLimits) -> SandboxOutcome:
        """Run ``main(inputs)`` of ``code``; raises ``SandboxUnavailable`` when the sandbox is
        on and cannot be set up here."""
        problem = await self.problem()
        if problem is not None:
            raise SandboxUnavailable(problem)
        request = json.dumps(
            {
                "code": code,
                "inputs": inputs,
                "paths": _split(self.settings.code_python_paths),
                "limits": {
                    "memory_bytes": limits.memory_mb * 1024 * 1024,
                    "cpu_s": math.ceil(limits.timeout_s) + 1,
                    "processes": limits.max_processes,
                    "file_bytes": limits.scratch_mb * 1024 * 1024,
                },
            }
        ).encode()
        pooled = self._pooled(language, limits)
        started = self._spare(language) if pooled else None
        if started is None:
            started = await self._start(language, limits)
        try:
            return await self._execute(started.process, request, limits)
        finally:
            if started.scratch is not None:
                started.scratch.cleanup()
            if pooled:  # after the execution: starting one during it would slow it down
                self._start_spares(language, limits)

    def _pooled(self, language: Language, limits: SandboxLimits) -> bool:
        """Whether executions like this one have spares: every Python one, JavaScript ones
        with the default heap."""
        if not self.enabled or self.settings.code_warm_pool == 0 or self._closing:
            return False
        return language == "python" or limits.memory_mb == POOLED_JS_MEMORY_MB

    def spare_pids(self) -> frozenset[int]:
        """The process ids of the spares waiting now (what tests tell apart from leftovers)."""
        return frozenset(process.pid for spares in self._spares.values() for process in spares)

    def _spare(self, language: Language) -> _Started | None:
        """A spare sandbox of this event loop for ``language``, if one is there."""
        spares = self._spares.setdefault((asyncio.get_running_loop(), language), [])
        while spares:
            candidate = spares.pop(0)
            if candidate.returncode is None:
                return _Started(candidate, None)
        return None

    def _start_spares(self, language: Language, limits: SandboxLimits) -> None:
        """Start spares of this event loop up to ``code_warm_pool``, in the background."""
        if self._closing:
            return
        self._drop_spares(lambda other: other.is_closed())
        refill = asyncio.ensure_future(self._refill((asyncio.get_running_loop(), language), limits))
        self._refills.add(refill)
        refill.add_done_callback(self._refills.discard)

    def _drop_spares(self, which: Callable[[asyncio.AbstractEventLoop], bool]) -> None:
        """Kill the spares of the event loops ``which`` selects (loops that ended: their pipes
        can no longer be used), without waiting: they have run nothing."""
        for key in [key for key in self._spares if which(key[0])]:
            for process in self._spares.pop(key):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)

    async def _refill(self, key: _PoolKey, limits: SandboxLimits) -> None:
        spares = self._spares.setdefault(key, [])
        while not self._closing and len(spares) + self._starting.get(key, 0) < self.settings.code_warm_pool:
            self._starting[key] = self._starting.get(key, 0) + 1
            try:
                started = await self._start(key[1], limits)
            except OSError:
                return  # the next execution starts its own, and says what is wrong
            finally:
                self._starting[key] -= 1
            spares.append(started.process)

    async def close(self) -> None:
        """Kill the spares of the running event loop: call it before that loop ends."""
        loop = asyncio.get_running_loop()
        self._closing = True
        # Not cancelled: a process being started would be lost; it is killed below instead.
        await asyncio.gather(*self._refills, *self._reaping, return_exceptions=True)
        for key in [key for key in self._spares if key[0] is loop]:
            for process in self._spares.pop(key):
                await self._kill(process)
        self._drop_spares(lambda other: True)

    async def _execute(
        self, process: asyncio.subprocess.Process, request: bytes, limits: SandboxLimits
    ) -> SandboxOutcome:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        out, err = bytearray(), bytearray()
        budget = [limits.max_output_bytes]

        async def feed() -> None:
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(request)
                await process.stdin.drain()
                process.stdin.close()

        async def read(stream: asyncio.StreamReader, sink: bytearray, cap: int, shared: bool) -> None:
            """Into ``sink`` until the end of the pipe or, on the result channel, a whole result."""
            while chunk := await stream.read(65536):
                sink.extend(chunk)
                if shared:
                    budget[0] -= len(chunk)
                if len(sink) > cap or budget[0] < 0:
                    raise _OutputLimit
                if not shared and _has_result(sink):
                    return

        logs = asyncio.ensure_future(read(process.stdout, out, limits.max_output_bytes, True))
        # The result channel holds the result (up to the limit) and its marker.
        result = asyncio.ensure_future(read(process.stderr, err, limits.max_output_bytes + 4096, False))
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(feed()), logs, result]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.timeout_s + STARTUP_ALLOWANCE_S
        try:
            while not result.done():  # the result (or the channel's end), a reader past its limit, the deadline
                watched = {result} if logs.done() else {result, logs}
                done, _ = await asyncio.wait(
                    watched, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    raise TimeoutError
                for task in done:
                    task.result()  # raises _OutputLimit
            if not logs.done():  # what the code printed is in the pipe already: it ends at once
                await asyncio.wait({logs}, timeout=max(0.0, min(LOG_GRACE_S, deadline - loop.time())))
            if logs.done():
                logs.result()
        except TimeoutError:
            await _cancelled(tasks)
            await self._kill(process)
            return SandboxOutcome(
                False, error_type="timeout", message=f"the code ran longer than its timeout_s ({limits.timeout_s:g} s)"
            )
        except _OutputLimit:
            await _cancelled(tasks)
            await self._kill(process)
            return SandboxOutcome(
                False,
                error_type="output_limit",
                message=f"the code printed or returned more than {limits.max_output_bytes} bytes",
            )
        except BaseException:
            await _cancelled(tasks)
            await self._kill(process)
            raise
        await _cancelled(tasks)
        # The sandbox ends by itself (its runner exits after the result); its teardown is not
        # the node's time. A process the code left behind dies with it.
        reaping = asyncio.ensure_future(self._reap(process))
        self._reaping.add(reaping)
        reaping.add_done_callback(self._reaping.discard)
        returncode = process.returncode if _has_result(err) else await _exit_status(process)
        return _outcome(returncode, bytes(out), bytes(err), limits)

    async def _reap(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), REAP_GRACE_S)
        except TimeoutError:
            pass
        finally:
            await self._kill(process)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        """Kill the sandbox; its PID namespace, and every process the code started in it, dies
        with it (``--die-with-parent``), or its process group when the sandbox is off."""
        with contextlib.suppress(ProcessLookupError):
            if self.enabled:
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)

        if process.stdin is not None:  # a spare's is still open: its transport would outlive the loop
            process.stdin.close()

        async def drain(stream: asyncio.StreamReader | None) -> None:
            # A stream nobody reads stops at its buffer's limit and never sees the end of
            # the pipe: asyncio's wait() would never return.
            while stream is not None and await stream.read(65536):
                pass

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(drain(process.stdout), drain(process.stderr), process.wait()), KILL_WAIT_S
            )


_PoolKey = tuple[asyncio.AbstractEventLoop, Language]


@dataclass(frozen=True)
class _Started:
    process: asyncio.subprocess.Process
    scratch: tempfile.TemporaryDirectory[str] | None
    """The scratch directory of an unsandboxed process (the sandbox has its own tmpfs)."""


def _has_result(channel: bytearray | bytes) -> bool:
    at = channel.rfind(RESULT_MARKER_BYTES)
    return at >= 0 and channel.find(b"\n", at) >= 0


async def _exit_status(process: asyncio.subprocess.Process) -> int | None:
    """The exit status of a sandbox that ended without a result (a crash, a kill)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(process.wait()), KILL_WAIT_S)
    return process.returncode


async def _cancelled(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until they stopped (the pipes' readers: they are drained next)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _spawn(
    command: list[str], *, env: dict[str, str], cwd: str | None, extra: dict[str, Any]
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        **extra,
    )


def _prlimit(limits: SandboxLimits, address_mb: int) -> list[str]:
    cpu_s = math.ceil(limits.timeout_s) + 1
    return [
        "prlimit",
        f"--as={address_mb * 1024 * 1024}",
        f"--cpu={cpu_s}:{cpu_s + 1}",
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.scratch_mb * 1024 * 1024}",
        "--nofile=64",
        "--core=0",
        "--",
    ]


def _log_lines(out: bytes, extra: str) -> tuple[str, ...]:
    text = out.decode("utf-8", errors="replace")
    if extra:
        text = text + ("" if not text or text.endswith("\n") else "\n") + extra
    return tuple(text.splitlines())


def _outcome(returncode: int | None, out: bytes, err: bytes, limits: SandboxLimits) -> SandboxOutcome:
    channel = err.decode("utf-8", errors="replace")
    before, marker, result = channel.rpartition(RESULT_MARKER)
    result = result.split("\n", 1)[0]
    stray = before.strip() if marker else channel.strip()
    logs = _log_lines(out, stray)
    if marker:
        try:
            payload = json.loads(result)
        except json.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and payload.get("ok") is True:
            return SandboxOutcome(True, output=payload.get("output"), logs=logs)
        if isinstance(payload, dict) and payload.get("ok") is False:
            error_type = str(payload.get("type") or "Error")
            message = str(payload.get("message") or "")
            line = payload.get("line") if isinstance(payload.get("line"), int) else None
            if error_type == "MemoryError" or (error_type == "RangeError" and "allocation failed" in message):
                return SandboxOutcome(
                    False,
                    error_type="memory_limit",
                    message=f"the code used more than its memory_mb ({limits.memory_mb} MB): {error_type} {message}",
                    line=line,
                    logs=logs,
                )
            return SandboxOutcome(False, error_type=error_type, message=message, line=line, logs=logs)
    if "heap out of memory" in channel or "MemoryError" in channel:
        return SandboxOutcome(
            False,
            error_type="memory_limit",
            message=f"the code used more than its memory_mb ({limits.memory_mb} MB)",
            logs=logs,
        )
    # A signal's death: negative without bwrap, 128 + the signal through bwrap.
    killed_by = -returncode if returncode is not None and returncode < 0 else (returncode or 0) - 128
    if killed_by in (signal.SIGXCPU, signal.SIGKILL):
        return SandboxOutcome(
            False,
            error_type="timeout",
            message=f"the code used more CPU time than its timeout_s ({limits.timeout_s:g} s)",
            logs=logs,
        )
    return SandboxOutcome(
        False,
        error_type="SandboxExit",
        message=f"the code's process ended without a result (exit status {returncode})",
        logs=logs,
    )
