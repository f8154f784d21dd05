"""One call of a node's handler, and the two ways to carry it out.

``DirectRunner`` runs the handler in-process with its own retries and timeout: used for
pure control nodes, for tests without Prefect and as the asyncio baseline of the
benchmarks. ``flows.prefect_runner.PrefectRunner`` runs it as a Prefect task run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from builder.plan import PlanNode, RetryPolicy
from node_handlers.base import Completed, NodeContext, NodeError, NodeHandler, retry_class_of


@dataclass
class NodeCall:
    node: PlanNode
    path: tuple[int, ...]
    handler: NodeHandler
    config: Any
    """The validated configuration, templates resolved."""
    make_context: Callable[[int], NodeContext]
    """Builds the handler's context for a given attempt (1-based)."""
    cache_key: str | None
    on_retry: Callable[[int, BaseException, float], None]
    task_run_name: str
    attempts: int = 0
    task_run_id: str | None = None
    upstream_task_runs: tuple[str, ...] = ()
    """Task runs of the nodes whose edges fired into this one (the Prefect run graph's edges)."""
    parent_task_run: str | None = None
    """Task run of the container this node runs in."""

    async def invoke(self, attempt: int) -> Completed:
        self.attempts = attempt
        return await self.handler.run(self.config, self.make_context(attempt))


@dataclass(frozen=True)
class CallResult:
    completed: Completed | None
    error: BaseException | None
    attempts: int
    cached: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


def should_retry(exc: BaseException, policy: RetryPolicy, attempt: int) -> bool:
    if attempt >= policy.max_attempts or not isinstance(exc, Exception):
        return False
    retry_class = retry_class_of(exc)
    return retry_class is not None and retry_class in policy.retry_on


def retry_delay(exc: BaseException, policy: RetryPolicy, attempt: int) -> float:
    """Delay before attempt ``attempt + 1``: the policy's backoff, or longer when the
    server asked for it with ``Retry-After`` (capped by ``max_delay_s``)."""
    delays = policy.delays()
    delay = delays[min(attempt - 1, len(delays) - 1)] if delays else 0.0
    if policy.jitter:
        delay *= 1 + random.uniform(-policy.jitter, policy.jitter)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after:
        delay = max(delay, min(float(retry_after), policy.max_delay_s))
    return max(0.0, delay)


@dataclass(frozen=True)
class MirroredRun:
    """A node execution that ran without the runner (inline nodes, containers, a node that
    failed before running), to show where the runner shows its runs."""

    node: PlanNode
    path: tuple[int, ...]
    name: str
    task_run_id: str
    started: datetime
    ended: datetime | None
    """None: it has started and goes on (a container, a delay)."""
    error: BaseException | None = None
    upstream: tuple[str, ...] = ()
    parent: str | None = None
    attempts: int = 1


class NodeRunner(Protocol):
    recording: bool
    """Whether ``record`` and ``log`` show anything (so task run ids are worth making)."""

    async def run(self, call: NodeCall) -> CallResult: ...

    def record(self, entry: MirroredRun) -> None:
        """Show ``entry`` where the runner shows its runs (Prefect: as a task run)."""

    def log(self, line: str, *, task_run_id: str | None, failed: bool) -> None:
        """A line about a node execution that ended, where the runner keeps logs."""


class DirectRunner:
    """Runs handlers in-process: retries with backoff, timeouts by cancellation."""

    async def run(self, call: NodeCall) -> CallResult:
        policy = call.node.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                if call.node.timeout_s:
                    async with asyncio.timeout(call.node.timeout_s):
                        completed = await call.invoke(attempt)
                else:
                    completed = await call.invoke(attempt)
                return CallResult(completed, None, attempt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError) and call.node.timeout_s:
                    exc = NodeError(
                        f"timed out after {call.node.timeout_s:g} s", retry_class="timeout", error_type="Timeout"
                    )
                if not should_retry(exc, policy, attempt):
                    return CallResult(None, exc, attempt)
                delay = retry_delay(exc, policy, attempt)
                call.on_retry(attempt, exc, delay)
                await asyncio.sleep(delay)

    recording = False

    def record(self, entry: MirroredRun) -> None:
        pass

    def log(self, line: str, *, task_run_id: str | None, failed: bool) -> None:
        pass
