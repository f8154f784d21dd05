"""What every event log is: the ``EventLog`` protocol, the event as stored, the JSON it is
stored as, and the idle clock of ``follow``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flows.events import FINAL_EVENT_TYPES, RunEvent

MAX_SEQ = 2**63 - 1
"""The largest seq: a signed 64-bit integer (the SQL column, a Redis stream id's half)."""


def checked_after(after: int) -> int:
    """``after`` when it can be a seq (0..MAX_SEQ); ValueError otherwise, rather than a
    database or Redis error from deep inside a read."""
    if not 0 <= after <= MAX_SEQ:
        raise ValueError(f"after must be between 0 and {MAX_SEQ}, not {after}")
    return after


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: ``data`` is ``RunEvent.payload()``, the JSON ``data`` of the SSE event."""

    execution_id: str
    seq: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENT_TYPES

    def sse(self) -> dict[str, str]:
        """The event for sse-starlette's ``EventSourceResponse``."""
        return {"id": str(self.seq), "event": self.type, "data": json.dumps(self.data)}


@runtime_checkable
class EventLog(Protocol):
    async def append(self, events: Sequence[RunEvent]) -> None:
        """Store events; appending an event that is already stored (same execution id and seq)
        does nothing, so a batch can be retried."""

    async def read(self, execution_id: str, after: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """At most ``limit`` events of the run with ``seq > after``, ascending."""

    def follow(
        self, execution_id: str, after: int = 0, *, idle_timeout: float | None = None
    ) -> AsyncIterator[StoredEvent]:
        """Every event after ``after``, then the live ones as they are appended, ending after
        the run's final event (or after ``idle_timeout`` seconds without a new event)."""

    async def last_seq(self, execution_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""
        ...

    async def close(self) -> None: ...


class IdleClock:
    """How long a follower has waited without a new event, against its ``idle_timeout``.

    ``restart()`` once the consumer has taken a batch, not when the batch arrived: the time a
    slow consumer spends on events is not idle time, and must not end the stream of a run that
    goes on (the API would then report the run as ended)."""

    def __init__(self, timeout: float | None):
        self.timeout = timeout
        self._since = time.monotonic()

    def restart(self) -> None:
        self._since = time.monotonic()

    def remaining(self) -> float | None:
        """Seconds left to wait (negative once expired); None without a timeout."""
        return None if self.timeout is None else self.timeout - (time.monotonic() - self._since)

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0


def strict_json(value: Any) -> str:
    """Strict JSON for storage (and for browsers' ``JSON.parse``): values JSON cannot express are
    stored as text (dates, objects), NaN and infinities as null, rather than failing a batch."""
    try:
        return json.dumps(value, default=str, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_plain(value, set()), default=str, separators=(",", ":"), allow_nan=False)


def _plain(value: Any, seen: set[int]) -> Any:
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        if id(value) in seen:
            return "<cycle>"
        seen = seen | {id(value)}
        if isinstance(value, dict):
            return {k if isinstance(k, str) else str(k): _plain(v, seen) for k, v in value.items()}
        return [_plain(v, seen) for v in value]
    return value
