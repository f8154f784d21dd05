"""Run events: what the engine reports as a run unfolds (canvas spec, section 10).

Their types are ``EventType`` (``store/vocabulary.py``), the one list the API publishes.

The engine publishes every event to an ``EventBus`` owned by the run. Each event gets the
next sequence number of that run, so consumers can order, deduplicate and resume. Sinks
(the CLI's progress view, a durable event log) subscribe to the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from store.database import utcnow
from store.vocabulary import FINAL_EVENT_TYPES, EventType

__all__ = ["EVENT_TYPES", "FINAL_EVENT_TYPES", "EventBus", "EventType", "RunEvent", "Subscriber", "utcnow"]

log = logging.getLogger(__name__)

EVENT_TYPES = frozenset(EventType)
"""Every event type (``store.vocabulary.EventType``): the bus publishes no other."""


@dataclass(frozen=True)
class RunEvent:
    seq: int
    type: str
    execution_id: str
    timestamp: str
    node_id: str | None = None
    path: tuple[int, ...] | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """The JSON ``data`` of the SSE event."""
        body: dict[str, Any] = {"execution_id": self.execution_id, "timestamp": self.timestamp}
        if self.node_id is not None:
            body["node_id"] = self.node_id
            body["path"] = list(self.path or ())
        body.update(self.data)
        return body


Subscriber = Callable[[RunEvent], None]


class EventBus:
    """Numbers and fans out the events of one run. Subscribers must be quick and must
    not raise; a failing subscriber is logged and dropped so it cannot stop the run."""

    def __init__(self, execution_id: str, start_seq: int = 0):
        self.execution_id = execution_id
        self._seq = start_seq
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(
        self,
        event_type: EventType | str,
        *,
        node_id: str | None = None,
        path: tuple[int, ...] | None = None,
        **data: Any,
    ) -> RunEvent:
        if event_type not in EVENT_TYPES:
            # Clients (the run page, the CLI) know only these: a new type goes into EventType.
            raise ValueError(f"unknown event type {event_type!r}: not an EventType (store/vocabulary.py)")
        self._seq += 1
        event = RunEvent(
            self._seq,
            event_type,
            self.execution_id,
            utcnow().isoformat(),
            node_id,
            None if node_id is None else tuple(path or ()),
            data,
        )
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed; dropping it")
                self._subscribers.remove(subscriber)
        return event
