"""Signed webhook requests already delivered: a replay of one within its timestamp's window
is refused (``api/signing.py`` refuses it after that).

``first_use(hook_id, signature)`` remembers the signature and says whether it is new. With
Redis configured (``FLOWMAESTRO_REDIS_URL``) every API process shares the memory (one
``SET NX EX``: atomic, so of two copies sent at once exactly one is new); without Redis each
process remembers on its own, which is enough for one API process only. ``forget`` gives a
signature back when its request started nothing (a 429, a 503, inputs that do not fit), so
the sender may retry the very same request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Protocol

from api.signing import REMEMBER_S


def _key(hook_id: str, signature: str) -> str:
    # Hashed: a fixed-size key whatever the header holds.
    return f"{hook_id}:{hashlib.sha256(signature.strip().encode()).hexdigest()}"


class ReplayGuard(Protocol):
    async def first_use(self, hook_id: str, signature: str) -> bool: ...

    async def forget(self, hook_id: str, signature: str) -> None: ...


class MemoryReplayGuard:
    def __init__(self, remember_s: float = REMEMBER_S, clock: Callable[[], float] = time.monotonic):
        self.remember_s, self.clock = remember_s, clock
        self._until: dict[str, float] = {}

    async def first_use(self, hook_id: str, signature: str) -> bool:
        now = self.clock()
        if len(self._until) > 10_000:  # forget what is past its window
            self._until = {k: until for k, until in self._until.items() if until > now}
        key = _key(hook_id, signature)
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + self.remember_s
        return True

    async def forget(self, hook_id: str, signature: str) -> None:
        self._until.pop(_key(hook_id, signature), None)


class RedisReplayGuard:
    def __init__(self, redis: Any, remember_s: int = REMEMBER_S, prefix: str = "flowmaestro:webhook-seen:"):
        """``redis``: the rate limiter's client (its timeouts and retries)."""
        self.redis, self.remember_s, self.prefix = redis, remember_s, prefix

    async def first_use(self, hook_id: str, signature: str) -> bool:
        return bool(await self.redis.set(self.prefix + _key(hook_id, signature), "1", nx=True, ex=self.remember_s))

    async def forget(self, hook_id: str, signature: str) -> None:
        await self.redis.delete(self.prefix + _key(hook_id, signature))
