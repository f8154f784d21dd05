"""Concurrency keys and rate limits of nodes, on Prefect's global concurrency limits.

A node with ``concurrency: {key, limit}`` holds a slot of the global concurrency limit named
after its resolved key for the whole of its execution (its retries included); one with
``rate_limit: {key, per_minute}`` takes a slot of a limit whose slots decay, one every
``60 / per_minute`` seconds. The limits live on the Prefect server, so every worker process
(on any machine) counts against the same ones, and the Prefect UI shows them (Concurrency).

Names: ``fm:<owner>:<key>`` and ``fm-rate:<owner>:<key>`` (``fm:<key>`` for a run without an
owner). The owner is part of the name so that one owner's keys can neither starve nor
re-size another's. Limits are created on first use, and set again when a node asks for
another size (the last size asked for wins: nodes sharing a key should agree on it).

A rate limit is Prefect's: a limit of one slot that decays at ``per_minute / 60`` slots a
second, so starts are spread evenly (never two within ``60 / per_minute`` seconds), rather
than a burst of ``per_minute`` followed by a wait.

Waiting happens in the flow, before the node takes one of the run's ``max_concurrency``
slots and before its task run exists. A node that is still waiting for a concurrency slot
after ``release_after_s`` lets go of the run when nothing else of it executes
(``Execution.release``, as a long delay does): the worker's slot is freed and the run is
scheduled again later. A rate-limit wait is not cut short (see ``held``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from node_handlers.base import NodeError

log = logging.getLogger("flowmaestro.node_limits")

LimitKind = Literal["concurrency", "rate_limit"]

FORBIDDEN_KEY_CHARACTERS = frozenset("/%&><?#\\")
"""Prefect refuses ``/ % & > <`` in limit names; ``? # \\`` would break the URL that reads one."""
MAX_KEY_CHARS = 200

LEASE_S = 300.0
"""How long a held slot lives without its holder renewing it (Prefect renews it while the
node runs): a worker that dies gives its slots back after this."""

WAITING_AFTER_S = 0.5
"""A node not granted its slot within this, whose limit is full on the server, is reported
waiting (``node:waiting``); an uncontended acquisition is one request to the Prefect server."""


@dataclass(frozen=True)
class ResolvedLimit:
    kind: LimitKind
    key: str
    """The resolved key, as the node's events show it."""
    limit: int
    """Executions at once (concurrency) or starts a minute (rate_limit)."""
    name: str
    """The Prefect global concurrency limit."""

    @property
    def slot_decay_per_second(self) -> float:
        return self.limit / 60.0 if self.kind == "rate_limit" else 0.0

    @property
    def slots(self) -> int:
        """A rate limit holds one slot: its decay spaces the starts."""
        return 1 if self.kind == "rate_limit" else self.limit


def limit_name(kind: LimitKind, owner: str | None, key: str) -> str:
    prefix = "fm" if kind == "concurrency" else "fm-rate"
    return f"{prefix}:{owner}:{key}" if owner else f"{prefix}:{key}"


def resolved_limit(kind: LimitKind, owner: str | None, rendered: object, limit: int) -> ResolvedLimit:
    """The limit of a node execution from its rendered key; a key that cannot name a Prefect
    limit fails the node (``ConfigError``, naming the field)."""
    field = f"{kind}.key"
    if rendered is None or isinstance(rendered, (dict, list)):
        raise NodeError(f"{field} resolved to {type(rendered).__name__}, not a string", error_type="ConfigError")
    key = str(rendered).strip()
    if not key:
        raise NodeError(f"{field} resolved to an empty string", error_type="ConfigError")
    if len(key) > MAX_KEY_CHARS:
        raise NodeError(
            f"{field} resolved to {len(key)} characters (at most {MAX_KEY_CHARS})", error_type="ConfigError"
        )
    bad = sorted({c for c in key if c in FORBIDDEN_KEY_CHARACTERS or not c.isprintable()})
    if bad:
        raise NodeError(
            f"{field} resolved to a key with characters a limit name cannot hold: {' '.join(map(repr, bad))}",
            error_type="ConfigError",
        )
    return ResolvedLimit(kind, key, limit, limit_name(kind, owner, key))


OnWaiting = Callable[[ResolvedLimit], None]
OnLongWait = Callable[[ResolvedLimit], Awaitable[None]]
"""Called each time a node has waited ``release_after_s`` more: may let go of the run
(raises the runner's release signal) or return to go on waiting."""


class NodeLimiter(Protocol):
    def held(
        self,
        limits: tuple[ResolvedLimit, ...],
        *,
        on_waiting: OnWaiting,
        on_long_wait: OnLongWait | None = None,
        release_after_s: float | None = None,
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


class PrefectNodeLimits:
    """The limits of one process's runs on the Prefect server of its ``PREFECT_API_URL``.

    Remembers which limits it has created or re-sized (so a warm acquisition is one request),
    for the life of the process: a limit deleted in the Prefect UI meanwhile is not created
    again by this process until it restarts (Prefect then lets nodes through unlimited)."""

    def __init__(self) -> None:
        self._ensured: dict[str, tuple[int, float]] = {}
        self._lock = asyncio.Lock()

    async def ensure(self, limit: ResolvedLimit) -> None:
        wanted = (limit.slots, limit.slot_decay_per_second)
        if self._ensured.get(limit.name) == wanted:
            return
        async with self._lock:
            if self._ensured.get(limit.name) == wanted:
                return
            async with get_client() as client:
                await _upsert(client, limit.name, *wanted)
            self._ensured[limit.name] = wanted

    @contextlib.asynccontextmanager
    async def held(
        self,
        limits: tuple[ResolvedLimit, ...],
        *,
        on_waiting: OnWaiting,
        on_long_wait: OnLongWait | None = None,
        release_after_s: float | None = None,
    ) -> AsyncIterator[None]:
        """Concurrency slots first, held until the block ends; then the rate limits' (a start
        counts when the node really starts, not while it waits for a concurrency slot)."""
        ordered = sorted(limits, key=lambda limit: limit.kind != "concurrency")
        async with contextlib.AsyncExitStack() as stack:
            for limit in ordered:
                await self.ensure(limit)
                acquire: Callable[[], Awaitable[object]]
                if limit.kind == "concurrency":
                    # A fresh context manager for each attempt: a wait cut short consumed the last one.
                    acquire = functools.partial(_enter_slot, stack, limit.name)
                else:
                    acquire = functools.partial(rate_limit, limit.name, occupy=1, strict=True)
                # Only a concurrency wait lets go of the run: Prefect hands a rate-limit slot granted
                # after its caller gave up to nobody, so cut-short waits would waste the spaced
                # starts (a rate-limit wait is bounded: the queue ahead times 60/per_minute s).
                releasing = on_long_wait if limit.kind == "concurrency" else None
                await _acquire(limit, acquire, on_waiting, releasing, release_after_s)
            yield


def _slot(name: str) -> contextlib.AbstractAsyncContextManager[None]:
    # A failed renewal (the Prefect server briefly away) must not kill the node: the lease
    # outlives it by minutes.
    return concurrency(name, occupy=1, lease_duration=LEASE_S, strict=True, raise_on_lease_renewal_failure=False)


async def _enter_slot(stack: contextlib.AsyncExitStack, name: str) -> None:
    await stack.enter_async_context(_slot(name))


async def _acquire(
    limit: ResolvedLimit,
    acquire: Callable[[], Awaitable[object]],
    on_waiting: OnWaiting,
    on_long_wait: OnLongWait | None,
    release_after_s: float | None,
) -> None:
    waiting = asyncio.create_task(_report_waiting(limit, on_waiting))
    try:
        while True:
            try:
                # Prefect gives back a slot granted after this wait was cut short.
                async with asyncio.timeout(release_after_s if on_long_wait is not None else None):
                    await acquire()
                return
            except TimeoutError:
                assert on_long_wait is not None
                await on_long_wait(limit)  # raises the release signal, or returns: wait on
    finally:
        waiting.cancel()


async def _report_waiting(limit: ResolvedLimit, on_waiting: OnWaiting) -> None:
    """``node:waiting`` once the acquisition has taken ``WAITING_AFTER_S`` and, for a
    concurrency limit, the limit is full on the server: a slow answer of a loaded Prefect
    server is not a wait for a slot. Until then it looks again every ``WAITING_AFTER_S``: a
    first look can fall before the holder's slot was granted, or between one holder and the
    next, while this node waits on. (A rate limit's stored slots do not say whether the next
    start is due: its wait is reported on time alone.) Cancelled once the slot is granted."""
    await asyncio.sleep(WAITING_AFTER_S)
    if limit.kind == "rate_limit":
        on_waiting(limit)
        return
    while True:
        try:
            async with get_client() as client:
                current = await client.read_global_concurrency_limit_by_name(limit.name)
        except Exception:  # the report is a courtesy: the acquisition says what really happened
            log.debug("could not read %s", limit.name, exc_info=True)
            return
        if current.active_slots >= current.limit:
            on_waiting(limit)
            return
        await asyncio.sleep(WAITING_AFTER_S)


async def _upsert(client: object, name: str, slots: int, decay: float) -> None:
    """Create the limit, or set its size: two processes creating it at once both succeed."""
    from prefect.client.orchestration import PrefectClient

    assert isinstance(client, PrefectClient)
    try:
        current = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots, slot_decay_per_second=decay)
            )
            log.info("created the concurrency limit %s (%d slots, decay %.3f/s)", name, slots, decay)
            return
        except ObjectAlreadyExists:
            current = await client.read_global_concurrency_limit_by_name(name)
    if current.limit != slots or (current.slot_decay_per_second or 0.0) != decay or not current.active:
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=slots, slot_decay_per_second=decay, active=True)
        )
        log.info("set the concurrency limit %s to %d slots, decay %.3f/s", name, slots, decay)
