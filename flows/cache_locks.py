"""Cache locks: two runs that need the same cached node execute it once.

Prefect's SERIALIZABLE cache isolation takes a lock per cache key around a task run; the
first run executes the node, the others wait and read its result. It needs a lock manager
(``prefect.locking.protocol.LockManager``). Prefect's own do not fit a worker that runs many
flow runs in one event loop (measured with 3.9.1 and prefect-redis 0.3.0, 20 runs sharing a
key on two workers: every run stalled):

- ``FileSystemLockManager.aacquire_lock`` falls back to its blocking ``acquire_lock`` when it
  loses a race, which sleeps in the event loop and stops every run of the process;
- ``RedisLockManager`` keeps a ``redis.asyncio`` lock and releases it from Prefect's
  synchronous ``release_lock``, so the release is a coroutine nobody awaits: the key stays
  locked and every later run waits forever.

These two wait with ``await asyncio.sleep`` between tries, and try, check and release with
one quick synchronous call (a file operation, or one Redis command): Prefect calls
``release_lock`` synchronously even from its async transactions. A lock expires after
``hold_s``, so a worker killed while holding one delays the others, never blocks them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

POLL_S = 0.05
DEFAULT_HOLD_S = 600.0


class _PollingLocks:
    """Waiting, for both kinds: try, then sleep ``POLL_S`` (``await`` in the async forms)."""

    def _try(self, key: str, holder: str) -> bool:
        raise NotImplementedError

    def is_locked(self, key: str) -> bool:
        raise NotImplementedError

    def acquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        deadline = _deadline(acquire_timeout)
        while not self._try(key, holder):
            if _past(deadline):
                return False
            time.sleep(POLL_S)
        return True

    async def aacquire_lock(
        self, key: str, holder: str, acquire_timeout: float | None = None, hold_timeout: float | None = None
    ) -> bool:
        deadline = _deadline(acquire_timeout)
        while not self._try(key, holder):
            if _past(deadline):
                return False
            await asyncio.sleep(POLL_S)
        return True

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = _deadline(timeout)
        while self.is_locked(key):
            if _past(deadline):
                return False
            time.sleep(POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = _deadline(timeout)
        while self.is_locked(key):
            if _past(deadline):
                return False
            await asyncio.sleep(POLL_S)
        return True


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


class FileCacheLocks(_PollingLocks):
    """Locks as files created atomically (``O_EXCL``) in one directory: for the processes
    of one machine."""

    def __init__(self, directory: Path, hold_s: float = DEFAULT_HOLD_S):
        self.directory = directory
        self.hold_s = hold_s

    def _path(self, key: str) -> Path:
        return self.directory / f"{uuid.uuid5(uuid.NAMESPACE_URL, key).hex}.lock"

    def _try(self, key: str, holder: str) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            info = self._read(path)
            if info is None or info["expires"] < time.time():  # gone, or its holder died long ago
                path.unlink(missing_ok=True)
                return False
            return info["holder"] == holder
        with os.fdopen(fd, "w") as file:
            json.dump({"holder": holder, "expires": time.time() + self.hold_s}, file)
        return True

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def release_lock(self, key: str, holder: str) -> None:
        path = self._path(key)
        info = self._read(path)
        if info is not None and info["holder"] == holder:
            path.unlink(missing_ok=True)

    def is_locked(self, key: str) -> bool:
        info = self._read(self._path(key))
        return info is not None and info["expires"] >= time.time()

    def is_lock_holder(self, key: str, holder: str) -> bool:
        info = self._read(self._path(key))
        return info is not None and info["holder"] == holder


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisCacheLocks(_PollingLocks):
    """Locks as Redis keys (``SET NX PX``; released by compare-and-delete): for workers on
    several machines."""

    def __init__(self, url: str, hold_s: float = DEFAULT_HOLD_S, prefix: str = "flowmaestro:cache-lock:"):
        from redis import Redis

        self.redis = Redis.from_url(url)
        self.hold_s = hold_s
        self.prefix = prefix

    def _try(self, key: str, holder: str) -> bool:
        name = self.prefix + key
        return (
            bool(self.redis.set(name, holder, nx=True, px=int(self.hold_s * 1000)))
            or self.redis.get(name) == holder.encode()
        )

    def release_lock(self, key: str, holder: str) -> None:
        self.redis.eval(_RELEASE, 1, self.prefix + key, holder)

    def is_locked(self, key: str) -> bool:
        return bool(self.redis.exists(self.prefix + key))

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return self.redis.get(self.prefix + key) == holder.encode()
