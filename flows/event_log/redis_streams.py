"""The event log in Redis Streams: one stream per run.

redis-py is imported where it is used: a process that keeps its events in SQL never loads it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from flows.event_log.base import IdleClock, StoredEvent, checked_after, strict_json
from flows.events import FINAL_EVENT_TYPES, RunEvent
from store.errors import Unavailable

REDIS_KEY_PREFIX = "flowmaestro:events:"
RETRY_AFTER_S = 5


def redis_down(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a Redis call, means Redis is down or too slow: a connection
    refused, reset or timed out, a server still loading its data."""
    import redis.exceptions as redis_errors

    return isinstance(
        exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.BusyLoadingError, OSError)
    )


@asynccontextmanager
async def redis_calls() -> AsyncIterator[None]:
    """Around Redis I/O: a failure that means Redis is down raises ``Unavailable("redis")``."""
    try:
        yield
    except Exception as exc:
        if not redis_down(exc):
            raise
        raise Unavailable("redis", f"Redis is unavailable ({type(exc).__name__}); retry later", RETRY_AFTER_S) from exc


class RedisEventLog:
    """The event log in Redis: one stream per run, ``flowmaestro:events:<execution_id>``, entry
    ids ``<seq>-0`` with fields ``type`` and ``data`` (JSON). Redis refuses an id that is not
    greater than the stream's last one, which makes appends idempotent (and means a seq can
    never be inserted behind a later one).

    Every append (re)sets the stream's TTL to ``retention_days``: a stream expires that long
    after its last event, whether the run ended or not (its process died before the final
    event), as the SQL log purges the runs whose last event is older than its retention.

    A batch is appended by one Lua script (``XADD`` of each event with its explicit id, errors
    "equal or smaller than the target stream top item" ignored, then ``EXPIRE``): one round trip,
    and two to three times less client CPU than a pipeline of ``XADD`` (redis-py parses each
    reply in Python). ``use_script=False`` pipelines the same commands instead, for servers that
    refuse scripts.

    ``follow`` blocks on ``XREAD`` (``block_ms`` at a time) on a connection pool of its own, so
    waiting followers never hold up appends."""

    def __init__(
        self,
        url: str,
        *,
        retention_days: float = 7.0,
        block_ms: int = 1000,
        max_follow_connections: int = 1000,
        key_prefix: str = REDIS_KEY_PREFIX,
        use_script: bool = True,
    ):
        import redis.asyncio as redis
        import redis.exceptions as redis_errors
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        self.url = url
        self.retention_days = retention_days
        self.block_ms = block_ms
        self.key_prefix = key_prefix
        self.use_script = use_script
        # redis-py's 5 s timeouts run on the event loop's clock: a worker busy with many runs
        # (or a loaded machine) could see a healthy Redis time out and fail a run for it.
        # After Redis restarts, every pooled connection fails its next command ("Connection closed
        # by server"): retry those on a new connection (reads and the idempotent append are safe
        # to repeat), or the next run of each worker fails at its start and streams break.
        reconnect = {
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.1), 3),
            "retry_on_error": [redis_errors.ConnectionError],
        }
        self.redis = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=30, socket_timeout=30, **reconnect
        )
        self._append_script = self.redis.register_script(_APPEND_LUA)
        # Followers wait in XREAD BLOCK for up to block_ms: their own pool, which queues (rather
        # than refuses) followers beyond its size, with a socket timeout longer than the block.
        self._follow_pool = redis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            max_connections=max_follow_connections,
            timeout=None,
            socket_timeout=block_ms / 1000 + 10,
            **reconnect,
        )
        self.follow_redis = redis.Redis(connection_pool=self._follow_pool)

    def key(self, execution_id: str) -> str:
        return self.key_prefix + execution_id

    @property
    def ttl_seconds(self) -> int:
        return max(1, int(self.retention_days * 86400))

    @redis_calls()
    async def append(self, events: Sequence[RunEvent]) -> None:
        if not events:
            return
        runs: dict[str, list[RunEvent]] = {}
        for event in sorted(events, key=lambda e: (e.execution_id, e.seq)):
            runs.setdefault(event.execution_id, []).append(event)
        for execution_id, batch in runs.items():
            if self.use_script:
                args: list[Any] = [self.ttl_seconds]
                for event in batch:
                    args += [f"{event.seq}-0", event.type, strict_json(event.payload())]
                await self._append_script(keys=[self.key(execution_id)], args=args)
            else:
                await self._append_pipeline(execution_id, batch)

    async def _append_pipeline(self, execution_id: str, batch: list[RunEvent]) -> None:
        from redis.exceptions import ResponseError

        key = self.key(execution_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in batch:
                pipe.xadd(
                    key,
                    {"type": event.type, "data": strict_json(event.payload())},
                    id=f"{event.seq}-0",
                    nomkstream=False,
                )
            pipe.expire(key, self.ttl_seconds)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and _ALREADY_STORED in str(result):
                continue  # already stored (or behind the stream's top): ignored
            if isinstance(result, Exception):
                raise result

    @redis_calls()
    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        entries = await self.redis.xrange(
            self.key(execution_id), min=f"({checked_after(after)}-0" if after else "-", max="+", count=limit
        )
        return [self._stored(execution_id, entry_id, fields) for entry_id, fields in entries]

    async def follow(
        self, execution_id: str, after: int = 0, *, idle_timeout: float | None = None
    ) -> AsyncIterator[StoredEvent]:
        key = self.key(execution_id)
        last_id = f"{checked_after(after)}-0"
        idle = IdleClock(idle_timeout)
        while True:
            remaining = idle.remaining()
            # XREAD BLOCK 0 would wait forever: at least 1 ms, so that an expired clock still
            # reads what is already there before giving up.
            block = self.block_ms if remaining is None else max(1, min(self.block_ms, int(remaining * 1000) + 1))
            async with redis_calls():
                response = await self.follow_redis.xread({key: last_id}, count=1000, block=block)
            entries = _xread_entries(response, key)
            if not entries:
                if idle.expired():
                    return
                continue
            for entry_id, fields in entries:
                event = self._stored(execution_id, entry_id, fields)
                last_id = entry_id
                yield event
                if event.type in FINAL_EVENT_TYPES:
                    return
            idle.restart()  # the consumer has taken the batch: only now does waiting begin

    @redis_calls()
    async def last_seq(self, execution_id: str) -> int:
        """The highest stored seq of the run (0 if none)."""
        entries = await self.redis.xrevrange(self.key(execution_id), count=1)
        return int(entries[0][0].split("-", 1)[0]) if entries else 0

    @staticmethod
    def _stored(execution_id: str, entry_id: str, fields: dict[str, str]) -> StoredEvent:
        return StoredEvent(execution_id, int(entry_id.split("-", 1)[0]), fields["type"], json.loads(fields["data"]))

    async def close(self) -> None:
        await self.follow_redis.aclose()
        await self._follow_pool.disconnect()
        await self.redis.aclose()


_ALREADY_STORED = "equal or smaller"
_APPEND_LUA = """
-- KEYS[1]: the run's stream; ARGV[1]: its TTL in seconds, set afterwards;
-- then (id, type, data) per event, ascending.
local added = 0
for i = 2, #ARGV, 3 do
  local reply = redis.pcall('XADD', KEYS[1], ARGV[i], 'type', ARGV[i + 1], 'data', ARGV[i + 2])
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'equal or smaller', 1, true) then
      return redis.error_reply(reply.err)
    end
  else
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return added
"""


def _xread_entries(response: Any, key: str) -> list[tuple[str, dict[str, str]]]:
    """XREAD's reply as a list of ``(id, fields)`` (RESP2: ``[[key, entries]]``, RESP3: a dict)."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(response.get(key) or [])
    entries: list[tuple[str, dict[str, str]]] = []
    for stream, items in response:
        if stream == key:
            entries.extend(items)
    return entries
