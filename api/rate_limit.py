"""Requests a minute per key (a webhook), as fixed one-minute windows.

With Redis configured (``FLOWMAESTRO_REDIS_URL``) the counts are shared by every API
process: one ``INCR`` and, on a window's first request, an ``EXPIRE`` per request. This is
a dozen lines on the redis client the project already has, so no rate-limit library is
added. Without Redis each API process counts on its own: N processes accept up to N
times the limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

WINDOW_S = 60


class RateLimiter(Protocol):
    async def hit(self, key: str) -> float | None:
        """Count a request: None when it is allowed, else seconds until it would be."""

    async def close(self) -> None: ...


class MemoryRateLimiter:
    def __init__(self, limit: int, clock: Callable[[], float] = time.time):
        self.limit, self.clock = limit, clock
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str) -> float | None:
        now = self.clock()
        window = int(now // WINDOW_S)
        seen_window, count = self._counts.get(key, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._counts[key] = (window, count)
        if len(self._counts) > 10_000:  # forget the keys of past windows
            self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        return None if count <= self.limit else (window + 1) * WINDOW_S - now

    async def close(self) -> None:
        return None


class RedisRateLimiter:
    def __init__(self, url: str, limit: int, prefix: str = "flowmaestro:ratelimit:"):
        from redis.asyncio import Redis

        self.redis, self.limit, self.prefix = Redis.from_url(url), limit, prefix

    async def hit(self, key: str) -> float | None:
        now = time.time()
        window = int(now // WINDOW_S)
        name = f"{self.prefix}{key}:{window}"
        count = await self.redis.incr(name)
        if count == 1:
            await self.redis.expire(name, WINDOW_S * 2)
        return None if count <= self.limit else (window + 1) * WINDOW_S - now

    async def close(self) -> None:
        await self.redis.aclose()


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
