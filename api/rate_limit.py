"""Requests a minute per key (a webhook), over a sliding window: a request is allowed when
fewer than ``limit`` were allowed in the 60 s before it (fixed windows would let twice the
limit through across a boundary).

With Redis configured (``FLOWMAESTRO_REDIS_URL``) the window is shared by every API
process: a sorted set of the allowed requests' times per key, trimmed and checked in one
Lua script (atomic; a dozen lines on the redis client the project already has, so no
rate-limit library). Without Redis each API process counts on its own: N processes accept
up to N times the limit.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Protocol

WINDOW_S = 60
REDIS_TIMEOUT_S = 5


class RateLimiter(Protocol):
    async def hit(self, key: str) -> float | None:
        """Count a request: None when it is allowed, else seconds until it would be."""

    async def close(self) -> None: ...


class MemoryRateLimiter:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic):
        self.limit, self.clock = limit, clock
        self._allowed: dict[str, deque[float]] = {}

    async def hit(self, key: str) -> float | None:
        now = self.clock()
        allowed = self._allowed.setdefault(key, deque())
        while allowed and allowed[0] <= now - WINDOW_S:
            allowed.popleft()
        if len(allowed) >= self.limit:
            return allowed[0] + WINDOW_S - now
        allowed.append(now)
        if len(self._allowed) > 10_000:  # forget keys with nothing in their window
            self._allowed = {k: v for k, v in self._allowed.items() if v and v[-1] > now - WINDOW_S}
        return None

    async def close(self) -> None:
        return None


# KEYS[1]: the key's sorted set; ARGV: now, window, limit, a unique member.
_SLIDING_WINDOW = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tostring(tonumber(oldest[2]) + tonumber(ARGV[2]) - tonumber(ARGV[1]))
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return false
"""


class RedisRateLimiter:
    def __init__(self, url: str, limit: int, prefix: str = "flowmaestro:ratelimit:"):
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # Bounded: a Redis that hangs answers the webhook 503 in seconds, not never.
        # A restarted Redis fails each pooled connection's next command: retry on a new one.
        self.redis = Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 3),
            retry_on_error=[RedisConnectionError],
        )
        self.limit, self.prefix = limit, prefix
        self._script = self.redis.register_script(_SLIDING_WINDOW)

    async def hit(self, key: str) -> float | None:
        # Redis's clock is the one all API processes share; wall time here would let hosts' clocks skew it.
        seconds, micros = await self.redis.time()
        wait = await self._script(
            keys=[f"{self.prefix}{key}"], args=[seconds + micros / 1e6, WINDOW_S, self.limit, uuid.uuid4().hex]
        )
        return None if wait is None else float(wait)

    async def close(self) -> None:
        await self.redis.aclose()


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
