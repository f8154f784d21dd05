"""Run node calls as Prefect task runs.

Every node becomes a task run named after the node (``summarize [2/10]`` in a body),
tagged ``node:<id>`` and ``type:<type>``, with the node's retry policy, timeout and
cache key, and the task runs of its upstream nodes as inputs (the Prefect UI's run graph
draws the canvas's edges from them). Nodes that ran inline are recorded as task runs too
(``prefect_compat.TaskRunRecorder``), at a fraction of the cost of a full task run, and
every node that ends writes a line to the flow run's logs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.locking.protocol import LockManager
from prefect.utilities.annotations import quote

from builder.plan import PlanNode, RetryPolicy
from flows import prefect_compat
from flows.cache_locks import FileCacheLocks, RedisCacheLocks
from flows.calls import CallResult, MirroredRun, NodeCall, retry_delay, should_retry
from flows.settings import EngineSettings
from node_handlers.base import Completed, NodeError

TASK_KEY = "flowmaestro-node"


def node_tags(node: PlanNode) -> list[str]:
    return ["flowmaestro", f"node:{node.id}", f"type:{node.type}"]


async def _node_body(call: NodeCall) -> dict[str, Any]:
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    if context:
        call.task_run_id = str(context.task_run.id)
        # Not in the task's options: a tag set before the run starts costs a concurrency
        # slot lookup per tag, and ~0.65 s the first time for every new set.
        prefect_compat.add_tags_to_running_task_run(node_tags(call.node))
        prefect_compat.set_inputs_of_running_task_run(call.upstream_task_runs, call.parent_task_run)
    try:
        completed = await call.invoke(attempt)
    except Exception as exc:
        if should_retry(exc, call.node.retry, attempt):
            delay = retry_delay(exc, call.node.retry, attempt)
            call.on_retry(attempt, exc, delay)
            # Prefect's retry delays are fixed when the task is built; when the server
            # asked for a longer wait (Retry-After), wait the difference here.
            scheduled = call.node.retry.delays()[min(attempt - 1, len(call.node.retry.delays()) - 1)]
            if getattr(exc, "retry_after_s", None) and delay > scheduled:
                await asyncio.sleep(delay - scheduled)
        raise
    # A plain dict, so a cached result can be read back by any process.
    return {
        "output": completed.output,
        "handles": sorted(completed.handles),
        "variables": dict(completed.variables),
        "usage": dict(completed.usage or {}),
    }


def _call_of(parameters: dict[str, Any]) -> NodeCall:
    call = parameters["call"]
    return call.unwrap() if isinstance(call, quote) else call


def _cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    return _call_of(parameters).cache_key


def _task_run_name(parameters: dict[str, Any]) -> str:
    """A callable name: Prefect formats a string name with the parameters, which a label
    with braces breaks, and a name per call would need a new task per call."""
    return _call_of(parameters).task_run_name


_plain_task = task(_node_body, name="node", cache_policy=NO_CACHE, persist_result=False)


def cache_lock_manager(settings: EngineSettings) -> LockManager:
    """Locks that make concurrent runs needing the same cache key wait for one another
    (the first executes, the others read its result): Redis across machines, lock files
    for the processes of one machine."""
    if settings.cache_lock_redis_url:
        return RedisCacheLocks(settings.cache_lock_redis_url)
    return FileCacheLocks(settings.home / "cache-locks")


def cached_task(lock_manager: LockManager) -> Task:
    """The task of nodes with caching on: keyed by ``NodeCall.cache_key``, SERIALIZABLE."""
    policy = CacheKeyFnPolicy(cache_key_fn=_cache_key).configure(
        isolation_level="SERIALIZABLE", lock_manager=lock_manager
    )
    return task(_node_body, name="node", cache_policy=policy, persist_result=True)


def _retry_condition(policy: RetryPolicy):
    def retry_condition(task: Task, task_run: TaskRun, state: Any) -> bool:
        exc = state.data if isinstance(state.data, BaseException) else None
        return exc is not None and should_retry(exc, policy, task_run.run_count)

    return retry_condition


@functools.lru_cache(maxsize=1024)
def _task_with_policy(base: Task, retry: RetryPolicy, timeout_s: float | None, ttl_s: float | None) -> Task:
    """``base`` with a node's retry policy, time limit and cache expiry, built once per
    process for each such policy: building a task reads its function's source (a few ms),
    and most nodes share a policy. The task run's name comes from the call."""
    return base.with_options(
        retries=retry.max_attempts - 1,
        retry_delay_seconds=list(retry.delays()) or 0,
        retry_jitter_factor=retry.jitter or None,
        retry_condition_fn=_retry_condition(retry),
        timeout_seconds=timeout_s,
        cache_expiration=timedelta(seconds=ttl_s) if ttl_s else None,
        task_run_name=_task_run_name,
    )


class PrefectRunner:
    """A ``NodeRunner`` that runs calls as Prefect task runs of the current flow run."""

    def __init__(self, *, recorder: prefect_compat.TaskRunRecorder | None = None, cached: Task | None = None) -> None:
        """``recorder``: where nodes that ran outside the task engine are recorded as task
        runs, and node log lines go (nowhere without one). ``cached``: the task of nodes with
        caching on (``cached_task``); without one, two runs may both execute a node they
        could share."""
        self._cached = cached or task(_node_body, name="node", cache_key_fn=_cache_key, persist_result=True)
        self.recorder = recorder

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def _task_for(self, node: PlanNode) -> Task:
        base = self._cached if node.cache.enabled else _plain_task
        return _task_with_policy(base, node.retry, node.timeout_s, node.cache.ttl_s if node.cache.enabled else None)

    async def run(self, call: NodeCall) -> CallResult:
        # Quoted: Prefect would otherwise walk the call (configuration, handler, closures)
        # looking for futures, on every call.
        state = await self._task_for(call.node)(quote(call), return_state=True)
        # The task ran in this process: its value is the engine's, in memory (or what Prefect's
        # cache read for it); never read from wherever a state set through the API points.
        if state.is_completed():
            value = await prefect_compat.run_result(state)
            completed = Completed(
                output=value["output"],
                handles=frozenset(value["handles"]),
                variables=value.get("variables") or {},
                usage=value.get("usage") or None,
            )
            cached = prefect_compat.is_cached(state)
            return CallResult(completed, None, 0 if cached else max(call.attempts, 1), cached=cached)
        try:
            error = await prefect_compat.run_result(state)
        except prefect_compat.UntrustedResult:
            error = None
        if not isinstance(error, BaseException):
            error = NodeError(state.message or "the task run failed", error_type=state.name or "Failed")
        if isinstance(error, TimeoutError) or prefect_compat.is_timed_out(state):
            error = NodeError(f"timed out after {call.node.timeout_s:g} s", retry_class="timeout", error_type="Timeout")
        return CallResult(None, error, max(call.attempts, 1))

    def record(self, entry: MirroredRun) -> None:
        if self.recorder is None:
            return
        node = entry.node
        self.recorder.record(
            task_run_id=entry.task_run_id,
            name=entry.name,
            task_key=f"{TASK_KEY}-{node.type}",
            dynamic_key=f"{node.id}-{'.'.join(map(str, entry.path)) or 'top'}",
            tags=node_tags(node) + ["inline"],
            started=entry.started,
            ended=entry.ended,
            error=entry.error,
            upstream=entry.upstream,
            parent=entry.parent,
            attempts=entry.attempts,
        )

    def log(self, line: str, *, task_run_id: str | None, failed: bool) -> None:
        if self.recorder is not None:
            self.recorder.log(line, task_run_id=task_run_id, level=logging.ERROR if failed else logging.INFO)
