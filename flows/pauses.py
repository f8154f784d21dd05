"""Pausing a live run: a person's pause (``POST /api/executions/{id}/pause``) and breakpoints.

A pause is taken at a node boundary: once asked for, no node of the run starts, the nodes
running finish, and then the run waits. The wait itself is the run's approval gate
(``flows.approvals.PrefectApprovals``) with an empty form: the same Prefect pause (so the
Prefect UI's Resume continues it), the same release from the worker after
``FLOWMAESTRO_APPROVAL_HOLD_S``, the same records in flow-run inputs, so a run executed again
(released and resumed, or its worker killed) finds whether the pause was answered.

How a request reaches the run. Cancellation reaches a running engine through the worker's
one watcher, which reads the state of all its runs at once every second
(``deployments.worker``), or through a run's own poll of its state when no worker watches it.
A pause cannot be a Prefect state set from outside (Prefect would call the run paused while
its nodes still run, and nothing would hold it), so the API does two things: it writes the
request (who asked, when) as the flow-run input ``fm-pause-request-<id>``, and it tags the
flow run ``fm-pause``. The tag is read by those very watchers in the read they already make
(no extra call per run); the input tells the run who asked, and stays after the tag is
removed, so a run executed again before the pause was answered pauses again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx
from prefect.client.orchestration import get_client

from flows.approvals import PENDING, RESULT, approval_slug
from node_handlers.approval import ApprovalConfig

log = logging.getLogger("flowmaestro.pauses")

PAUSE_TAG = "fm-pause"
"""The flow-run tag that tells a run's watcher a pause was asked for."""
REQUEST = "fm-pause-request-"
"""Flow-run inputs ``fm-pause-request-<id>``: ``{"by", "at"}``."""
RUN_SUBJECT = "run"
"""The node id a person's pause is recorded under (its slug's base): no node of its own."""
QUIET_POLL_S = 0.05


class PauseConfig(ApprovalConfig):
    """What the approval gate is given for a pause: no form (the Prefect UI's Resume shows
    only ``approved``, and any answer continues the run) and a step of its own, so that each
    pause has its own key."""

    step: str
    kind: Literal["pause"] = "pause"


def manual_slug(request_id: str) -> str:
    return approval_slug(RUN_SUBJECT, (), f"pause-{request_id}")


def breakpoint_slug(node_id: str, path: tuple[int, ...]) -> str:
    return approval_slug(node_id, path, "breakpoint")


@dataclass(frozen=True)
class PauseRequest:
    id: str
    by: str | None
    at: str


async def _inputs(client: Any, run_id: uuid.UUID, prefix: str) -> dict[str, str]:
    found = await client.filter_flow_run_input(run_id, key_prefix=prefix, limit=1000, exclude_keys=set())
    return {item.key.removeprefix(prefix): item.value for item in found}


def _request(request_id: str, value: str) -> PauseRequest:
    try:
        data = json.loads(value)
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    by, at = data.get("by"), data.get("at")
    return PauseRequest(request_id, by if isinstance(by, str) else None, at if isinstance(at, str) else "")


async def open_requests(client: Any, run_id: uuid.UUID) -> tuple[list[PauseRequest], set[str]]:
    """The pause requests of a run not answered yet, oldest first, and the ids of those
    among them the run has paused on (announced as waiting)."""
    requests = await _inputs(client, run_id, REQUEST)
    if not requests:
        return [], set()
    answered = set(await _inputs(client, run_id, RESULT))
    announced = set(await _inputs(client, run_id, PENDING))
    found = [_request(rid, value) for rid, value in requests.items() if manual_slug(rid) not in answered]
    return sorted(found, key=lambda r: r.at), {r.id for r in found if manual_slug(r.id) in announced}


async def _set_tag(client: Any, run_id: uuid.UUID, present: bool) -> None:
    flow_run = await client.read_flow_run(run_id)
    tags = list(flow_run.tags or [])
    if (PAUSE_TAG in tags) == present:
        return
    tags = [*tags, PAUSE_TAG] if present else [t for t in tags if t != PAUSE_TAG]
    await client.update_flow_run(run_id, tags=tags)


async def request_pause(client: Any, run_id: uuid.UUID, by: str) -> str:
    """Ask a run to pause (the API, the CLI): its request recorded, then its tag set."""
    request_id = uuid.uuid4().hex[:12]
    value = json.dumps({"by": by, "at": datetime.now(UTC).isoformat()})
    await client.create_flow_run_input(run_id, key=REQUEST + request_id, value=value)
    await _set_tag(client, run_id, True)
    return request_id


async def withdraw_requests(client: Any, run_id: uuid.UUID) -> int:
    """Withdraw the pause requests the run has not paused on yet (a resume before the pause
    took effect): how many were withdrawn."""
    requests, announced = await open_requests(client, run_id)
    withdrawn = 0
    for request in requests:
        if request.id in announced:
            continue
        try:
            await client.delete_flow_run_input(run_id, REQUEST + request.id)
            withdrawn += 1
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
    await _set_tag(client, run_id, False)
    return withdrawn


def split_pause(pending: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The pause a run waits in (``{reason, by}`` or ``{reason, node_id, path}``), and the
    approvals that wait for a person beside it."""
    pauses = [p for p in pending if isinstance(p.get("pause"), dict)]
    return (pauses[0]["pause"] if pauses else None), [p for p in pending if "pause" not in p]


def is_pause_requested(flow_run: Any) -> bool:
    """Whether a flow run, as its watcher read it, was asked to pause."""
    return PAUSE_TAG in (getattr(flow_run, "tags", None) or ())


class Gate(Protocol):
    """The approval gate a pause waits in (``PrefectApprovals.wait``)."""

    async def wait(
        self, execution: Any, node: Any, frame: Any, config: Any, *, pause: dict[str, Any] | None = None
    ) -> Any: ...


class PauseGate:
    """The ``Execution.start_gate`` of a run: called before nodes start, it holds them while
    a pause is due (a person's request, a breakpoint not passed yet)."""

    def __init__(
        self, run_id: str, approvals: Gate, *, breakpoints: Iterable[str] = (), requested: asyncio.Event | None = None
    ) -> None:
        """``requested``: set by the run's watcher when the flow run is tagged ``fm-pause``."""
        self.run_id = uuid.UUID(run_id)
        self.approvals = approvals
        self.breakpoints = frozenset(breakpoints)
        self.requested = requested or asyncio.Event()
        self.passed: set[tuple[str, tuple[int, ...]]] = set()
        self.handled: set[str] = set()
        self.lock = asyncio.Lock()

    async def open(self) -> None:
        """A run executed again while a pause was asked for and not answered pauses again."""
        async with get_client() as client:
            requests, _ = await open_requests(client, self.run_id)
        if requests:
            self.requested.set()

    def _breakpoint(self, frame: Any, node_ids: tuple[str, ...]) -> str | None:
        return next(
            (n for n in node_ids if n in self.breakpoints and (n, tuple(frame.path)) not in self.passed),
            None,
        )

    async def before_start(self, execution: Any, frame: Any, node_ids: tuple[str, ...]) -> None:
        while self.requested.is_set() or self._breakpoint(frame, node_ids) is not None:
            async with self.lock:
                if self.requested.is_set():
                    await self._quiet(execution)
                    await self._manual(execution, frame)
                    continue
                node_id = self._breakpoint(frame, node_ids)
                if node_id is None:
                    continue
                await self._quiet(execution)
                path = tuple(frame.path)
                pause = {"reason": "breakpoint", "node_id": node_id, "path": list(path)}
                await self.approvals.wait(
                    execution,
                    execution.plan.nodes[node_id],
                    frame,
                    PauseConfig(step="breakpoint", message=f"breakpoint before {node_id!r}"),
                    pause=pause,
                )
                self.passed.add((node_id, path))

    @staticmethod
    async def _quiet(execution: Any) -> None:
        """Until no node (but containers, and approvals waiting) runs or is about to start."""
        while any(
            run.status in ("pending", "running") and not execution.plan.nodes[run.node_id].container
            for run in execution.record.trace
        ):
            await asyncio.sleep(QUIET_POLL_S)

    async def _manual(self, execution: Any, frame: Any) -> None:
        self.requested.clear()
        async with get_client() as client:
            requests, _ = await open_requests(client, self.run_id)
            requests = [r for r in requests if r.id not in self.handled]
            await _set_tag(client, self.run_id, False)
            for duplicate in requests[1:]:  # asked twice before it paused: one pause
                self.handled.add(duplicate.id)
                await client.delete_flow_run_input(self.run_id, REQUEST + duplicate.id)
        if not requests:
            return
        request = requests[0]
        self.handled.add(request.id)
        log.info("run %s: pausing, as %s asked", self.run_id, request.by or "someone")
        await self.approvals.wait(
            execution,
            None,
            frame,
            PauseConfig(step=f"pause-{request.id}", message=f"paused by {request.by or 'someone'}"),
            pause={"reason": "manual", "by": request.by, "requested_at": request.at},
        )
