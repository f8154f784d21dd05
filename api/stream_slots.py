"""A cap on the live streams of one run in one API process: each holds a connection and an
event-log follower for as long as the run goes on, so without a cap one client (or a page
left open in many tabs) could take every connection of the process."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from api.errors import ApiError

RETRY_AFTER_S = 5


class StreamSlots:
    def __init__(self, per_run: int):
        self.per_run = per_run
        self._open: Counter[str] = Counter()

    def lease(self, execution_id: str) -> Callable[[], None]:
        """Count a stream of the run, or answer 429 when it has ``per_run`` open already; the
        function that gives the slot back (once, however often it is called)."""
        if self._open[execution_id] >= self.per_run:
            raise ApiError(
                429,
                f"{self.per_run} streams of this run are open already; close one or retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[execution_id] += 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self._open[execution_id] -= 1
                if self._open[execution_id] <= 0:
                    del self._open[execution_id]

        return give_back


async def released_after(events: AsyncIterator[Any], give_back: Callable[[], None]) -> AsyncIterator[Any]:
    """``events``, giving the slot back when the stream ends, fails or its client leaves."""
    try:
        async for event in events:
            yield event
    finally:
        give_back()
