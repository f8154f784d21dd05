"""The words a run is told in, once: run statuses, node statuses and event types.

Each is a ``StrEnum``, so a member *is* its string: ``RunStatus.COMPLETED == "completed"``,
it is stored, sent as JSON and compared as that string, and code that still writes the
literal keeps working. The API publishes them in its OpenAPI schema (``api/schemas.py``)
and to the browser pages as a generated module (``GET /ui/vocabulary.js``, ``api/ui.py``).

They live in ``store``, the bottom layer, because the store is the lowest layer that needs
them: an execution row keeps its run status, and a final one is never overwritten
(``FINAL_RUN_STATUSES``). ``flows`` (the engine, the event bus), ``api`` and ``cli`` import
them from here.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType


class RunStatus(StrEnum):
    """The status of a run (an execution): canvas spec section 9."""

    PENDING = "pending"
    """Created, waiting for a worker (or waiting for one again after its worker died)."""
    RUNNING = "running"
    PAUSED = "paused"
    """Waiting for a person to answer an approval."""
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeStatus(StrEnum):
    """The status of one execution of a node: canvas spec section 9."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CACHED = "cached"
    """Completed earlier: its output came from Prefect's cache."""
    FAILED = "failed"
    SKIPPED = "skipped"
    """Every edge into it was dead (canvas spec section 3)."""
    PAUSED = "paused"
    """An approval waiting for a person."""
    CANCELLED = "cancelled"


class EventType(StrEnum):
    """The type of a run event (canvas spec section 10): the SSE ``event:`` field."""

    EXECUTION_STARTED = "execution:started"
    EXECUTION_PAUSED = "execution:paused"
    EXECUTION_RESUMED = "execution:resumed"
    EXECUTION_COMPLETED = "execution:completed"
    EXECUTION_FAILED = "execution:failed"
    EXECUTION_CANCELLED = "execution:cancelled"
    EXECUTION_RETRIED = "execution:retried"
    """The run was retried after its final event: the events that follow are its next
    execution's, and a stream goes on to that execution's final event."""
    NODE_STARTED = "node:started"
    NODE_COMPLETED = "node:completed"
    NODE_CACHED = "node:cached"
    NODE_ERROR = "node:error"
    NODE_SKIPPED = "node:skipped"
    NODE_RETRYING = "node:retrying"
    NODE_PAUSED = "node:paused"
    NODE_WAITING = "node:waiting"
    """A node waits for a slot of its ``concurrency`` key or its ``rate_limit``."""
    STREAM_CHUNK = "stream:chunk"
    STREAM_DONE = "stream:done"
    AGENT_TURN = "agent:turn"
    """An agent node's model turn completed (its usage)."""
    AGENT_TOOL_CALL = "agent:tool_call"
    """An agent node calls a tool (its arguments)."""
    AGENT_TOOL_RESULT = "agent:tool_result"
    """An agent node's tool call ended (ok or error, and how long it took)."""
    LOG_LINES = "log:lines"
    """What a node printed (a code node's ``print``/``console.log``), after it ran."""


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
"""A run in one of these has ended; its stored result is final."""
FINAL_NODE_STATUSES = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.CACHED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)
"""A node execution in one of these has ended."""
FINAL_EVENT_TYPES = frozenset(
    {EventType.EXECUTION_COMPLETED, EventType.EXECUTION_FAILED, EventType.EXECUTION_CANCELLED}
)
"""The last event of a run: a stream ends after it."""
RUN_STATUS_OF_FINAL_EVENT = MappingProxyType(
    {
        EventType.EXECUTION_COMPLETED: RunStatus.COMPLETED,
        EventType.EXECUTION_FAILED: RunStatus.FAILED,
        EventType.EXECUTION_CANCELLED: RunStatus.CANCELLED,
    }
)
NODE_STATUS_OF_EVENT = MappingProxyType(
    {
        EventType.NODE_STARTED: NodeStatus.RUNNING,
        EventType.NODE_RETRYING: NodeStatus.RUNNING,  # between attempts it is still running
        EventType.NODE_PAUSED: NodeStatus.PAUSED,
        EventType.NODE_WAITING: NodeStatus.RUNNING,  # started, waiting for its limit's slot
        EventType.NODE_COMPLETED: NodeStatus.COMPLETED,
        EventType.NODE_CACHED: NodeStatus.CACHED,
        EventType.NODE_ERROR: NodeStatus.FAILED,
        EventType.NODE_SKIPPED: NodeStatus.SKIPPED,
    }
)
"""The status a node has after each of its events (the ``node:*`` events)."""
