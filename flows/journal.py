"""The journal of a run: what it restores when it is executed again.

A flow run can run its code more than once: a crashed run rescheduled, a suspended
approval resumed, a Prefect retry, the Prefect UI's Retry button, ``POST .../retry``. Each
time the flow starts from the top. Every node execution ``(node_id, path)`` that completed
is kept here with the hash of its resolved configuration (``key``); executed again, the
engine restores the outcome instead of running the node, as long as the key is the same.

When a write happens decides what is exactly-once:

- nodes with side effects (every node but the pure control nodes) are written before the
  run moves on (``durable=True``): once their successors start, they are never repeated;
- pure control nodes (condition, transform, ...) are buffered and written with the next
  durable write or at the end: lost in a crash, they are computed again from restored
  inputs, which gives the same result;
- a waiting node (a delay) writes when it first started, so executed again it waits only
  what is left.

Runs without a store (``flowmaestro run``) keep the journal in memory only.

The journal also carries the run's node executions (``store.node_executions``: what each
node received, returned and logged, ``GET /api/executions/{id}/nodes``): each is buffered
when its node ends and written with the journal's next write, in the same transaction, at
the latest when the run stops executing (it ends, is released or handed back); an approval
flushes the journal before it waits (``flows.capabilities``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from flows.events import utcnow
from node_handlers.base import Completed
from node_handlers.redaction import SECRET_FIELDS, redact
from store.node_executions import NodeExecution
from store.queries import NodeOutcome

log = logging.getLogger("flowmaestro.journal")

Path = tuple[int, ...]
WRITE_ATTEMPTS = 4
MAX_BUFFERED = 500
"""Entries of inline nodes the journal holds before it writes them anyway."""


class JournalUnavailable(RuntimeError):
    """The store did not take a durable write: going on would risk repeating the node."""


class OutcomeStore(Protocol):
    """Where journals persist (``deployments.run_store.SqlRunStore``)."""

    async def outcomes(self, journal_id: str) -> list[NodeOutcome]: ...

    async def save_outcomes(
        self,
        journal_id: str,
        outcomes: Sequence[NodeOutcome],
        *,
        workflow_id: str | None,
        owner: str | None,
        executions: Sequence[NodeExecution] = (),
        execution_id: str | None = None,
    ) -> None:
        """The outcomes, with the node ``executions`` of run ``execution_id`` (given only
        when there are some) in the same transaction."""


class RunJournal:
    def __init__(
        self,
        journal_id: str,
        entries: Sequence[NodeOutcome] = (),
        *,
        store: OutcomeStore | None = None,
        workflow_id: str | None = None,
        owner: str | None = None,
        secrets: Sequence[str] = (),
        execution_id: str | None = None,
    ):
        """``journal_id``: the flow run id (a child run's: parent's id, node and path; a
        rerun's: the journal the API seeded, ``api.reruns``). ``secrets``: values to redact
        from the configurations kept with failures. ``execution_id``: the run its node
        executions are listed under; None keeps none (a journal used on its own)."""
        self.journal_id = journal_id
        self.execution_id = execution_id
        self._executions: list[NodeExecution] = []
        self.store = store
        self.workflow_id = workflow_id
        self.owner = owner
        self.secrets = tuple(s for s in secrets if s)
        self.entries: dict[tuple[str, Path], NodeOutcome] = {(e.node_id, e.path): e for e in entries}
        self._buffer: list[NodeOutcome] = []
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, journal_id: str, store: OutcomeStore | None, **kwargs: Any) -> RunJournal:
        entries = await store.outcomes(journal_id) if store is not None else []
        return cls(journal_id, entries, store=store, **kwargs)

    def entry(self, node_id: str, path: Path) -> NodeOutcome | None:
        """What an earlier execution of the run left of a node execution, if anything
        (whether it is restored is ``flows.policies.restores``)."""
        return self.entries.get((node_id, path))

    @staticmethod
    def restored(entry: NodeOutcome) -> tuple[Completed, int]:
        """The outcome and attempts of a node execution that completed."""
        data = entry.outcome
        completed = Completed(
            output=data.get("output"),
            handles=frozenset(data.get("handles") or ()),
            variables=data.get("variables") or {},
            usage=data.get("usage") or None,
        )
        return completed, entry.attempts

    def first_started(self, node_id: str, path: Path, key: str) -> datetime | None:
        entry = self.entries.get((node_id, path))
        return entry.started_at if entry is not None and entry.key == key else None

    async def started(self, node_id: str, path: Path, key: str) -> datetime:
        """Record when a waiting node first started (kept when it did already); that time."""
        earlier = self.first_started(node_id, path, key)
        if earlier is not None:
            return earlier
        now = utcnow()
        await self._write(NodeOutcome(node_id, path, key, "started", {}, 0, started_at=now, ended_at=now), True)
        return now

    async def step(self, node_id: str, path: Path, key: str, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """A named sub-step of a node execution (an agent's turn, a tool call): its result as
        an earlier execution of the run wrote it (same node configuration), else computed
        now and written before the node goes on. Kept as the entry ``<node id>#<name>`` at
        the node's path; ``name`` is unique within the node execution."""
        step_id = f"{node_id}#{name}"
        earlier = self.entries.get((step_id, path))
        if earlier is not None and earlier.status == "completed" and earlier.key == key:
            return earlier.outcome.get("output")
        output = await compute()
        await self._write(NodeOutcome(step_id, path, key, "completed", {"output": output}, 1, ended_at=utcnow()), True)
        return output

    async def completed(
        self, node_id: str, path: Path, key: str, completed: Completed, attempts: int, *, durable: bool
    ) -> None:
        earlier = self.entries.get((node_id, path))
        outcome = {
            "output": completed.output,
            "handles": sorted(completed.handles),
            "variables": dict(completed.variables),
            "usage": dict(completed.usage or {}),
        }
        await self._write(
            NodeOutcome(
                node_id,
                path,
                key,
                "completed",
                outcome,
                attempts,
                started_at=earlier.started_at if earlier else None,
                ended_at=utcnow(),
            ),
            durable,
        )

    async def failed(
        self,
        node_id: str,
        path: Path,
        key: str,
        error: Mapping[str, Any],
        attempts: int,
        config: Mapping[str, Any] | None,
        *,
        dead_letter: bool,
    ) -> None:
        """A node execution that failed after its last attempt; a dead letter when no error
        edge caught it. Kept with its configuration, secrets redacted."""
        outcome = {"error": self.redact(dict(error)), "config": self.redact(dict(config or {}))}
        await self._write(
            NodeOutcome(node_id, path, key, "failed", outcome, attempts, dead_letter=dead_letter, ended_at=utcnow()),
            False,
        )

    async def flush(self) -> None:
        """Write everything buffered, in one transaction."""
        async with self._writing:
            await self._flush()

    def node_execution(self, execution: NodeExecution) -> None:
        """Keep a node execution that ended; written with the next write (no store: dropped)."""
        if self.records_executions:
            self._executions.append(execution)

    @property
    def records_executions(self) -> bool:
        """Whether node executions are kept: the run has a store and says which run it is."""
        return self.store is not None and self.execution_id is not None

    async def _flush(self) -> None:
        if (not self._buffer and not self._executions) or self.store is None:
            self._buffer.clear()
            self._executions.clear()
            return
        batch, self._buffer = self._buffer, []
        executions, self._executions = self._executions, []
        # The execution the outcomes belong to: a rerun's or node test's journal has an id of its
        # own, and its dead letters must name the run. A store that keeps no node executions is
        # called as before when there are none.
        more: dict[str, Any] = {"execution_id": self.execution_id} if self.execution_id else {}
        if executions:
            more["executions"] = executions
        for attempt in range(WRITE_ATTEMPTS):
            try:
                await self.store.save_outcomes(
                    self.journal_id, batch, workflow_id=self.workflow_id, owner=self.owner, **more
                )
                return
            except Exception as exc:  # a database hiccup must not cost the run its journal
                if attempt == WRITE_ATTEMPTS - 1:
                    self._buffer[:0] = batch  # not written: whoever flushes next tries again
                    self._executions[:0] = executions
                    raise JournalUnavailable(f"the run's journal could not be written: {exc}") from exc
                log.warning("journal write failed (%s); trying again", exc)
                await asyncio.sleep(0.5 * 2**attempt)

    async def _write(self, entry: NodeOutcome, durable: bool) -> None:
        if entry.status == "started":  # read back by completed() and first_started()
            self.entries[(entry.node_id, entry.path)] = entry
        if self.store is None:  # nothing to replay it from: keep nothing
            return
        self._buffer.append(entry)
        # A long run of inline nodes is written in batches, not held until the end.
        if durable or len(self._buffer) >= MAX_BUFFERED:
            # Group commit: nodes that complete while a write is under way wait for it, and
            # the next one writes all of them in one transaction (a fan-out's branches end
            # together). Each returns once its own entry is stored.
            async with self._writing:
                if any(e is entry for e in self._buffer):
                    await self._flush()

    def redact(self, value: Any) -> Any:
        """``value`` with secret fields and every form of the run's secret values replaced
        (``node_handlers.redaction.redact``, as the handlers do)."""
        return redact(value, self.secrets, secret_fields=SECRET_FIELDS)
