"""Approval nodes: pause the Prefect flow run for a person, resume from the UI or the API.

Prefect pauses a whole flow run, with one form at a time, and fails a run whose pause
times out. FlowMaestro therefore keeps its own list of pending approvals per run and
shows them to Prefect one at a time:

- each waiting approval is announced as a flow-run input ``fm-pending-<slug>`` (node,
  path, message, form), so any process (the API, the CLI) can list and answer it;
- the oldest one is the Prefect pause (``pause_flow_run`` with the form as its
  ``RunInput``, key = slug, polled every second), so the Prefect UI shows its Resume
  button and form; the others wait their turn;
- decisions for any approval can also arrive as flow-run inputs ``fm-decision-<slug>``
  (written by ``resume_approval``), polled twice a second;
- FlowMaestro enforces ``timeout_s`` itself and then ends the Prefect pause by setting
  the run back to Running (``prefect_compat.end_pause``), so a timed-out approval routes
  along ``timeout`` instead of failing the run (Prefect's own pause timeout is set far
  beyond it);
- every outcome is recorded as ``fm-result-<slug>``, signed by the worker.

Every decision, whatever its way in, goes through ``flows.decisions.take``: checked
strictly against the approval's form, and recorded with its ``decided_by``/``via`` only
when FlowMaestro signed it (an answer through Prefect is ``via: "prefect-ui"``, and taken
only while ``FLOWMAESTRO_APPROVAL_PREFECT_UI`` allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import ValidationError

from builder.plan import PlanNode
from flows import prefect_compat
from flows.decisions import DecisionSigner, Refused, Taken, take
from node_handlers.approval import ApprovalConfig, form_model
from node_handlers.base import Completed, NodeError

log = logging.getLogger("flowmaestro.approvals")

PENDING, DECISION, RESULT = "fm-pending-", "fm-decision-", "fm-result-"
PREFECT_PAUSE_LIMIT_S = 365 * 24 * 3600  # Prefect fails a run at its pause timeout: keep it out of reach
DECISION_POLL_S = 0.5
PAUSE_POLL_S = 1
TIMED_RELEASE_MARGIN_S = 5
"""Beyond the workers' prefetch: the time a replay takes to reach the approval again."""
WAKE_EARLY_S = 10.0
"""A run released until a time (an approval's timeout, a delay's end) is scheduled this much
earlier: a worker takes it at its scheduled time, not before (Prefect holds a run's Pending
until then), and replaying it to the wait costs seconds (a cold worker's first run: ~8 s
measured); the wait then ends in the process, on time."""


def approval_slug(node_id: str, path: tuple[int, ...] | list[int], step: str | None = None) -> str:
    """A Prefect pause/input key for one approval execution: lowercase letters, digits
    and dashes, unique per (node, path), and per ``step`` of a node that asks several times
    (an agent's tool calls)."""
    base = re.sub(r"[^a-z0-9]+", "-", node_id.lower()).strip("-")[:40] or "node"
    where = "-".join(map(str, path))
    key = f"{node_id}|{list(path)}" if step is None else f"{node_id}|{list(path)}|{step}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return f"{base}-{where + '-' if where else ''}{digest}"


TOOL_CALL_FIELDS = ("kind", "tool", "arguments")
"""What a pending approval of an agent's tool call shows besides the form."""

ORGANISATIONAL_FIELDS = (
    "required",
    "allow_self_approval",
    "notify",
    "remind_every_s",
    "escalate_after_s",
    "escalate_to",
)
"""Who decides besides ``approvers`` (``api/approval_desk.py`` enforces them)."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def approvers_of(record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(users, groups) a pending approval names; an older record's plain list is users."""
    named = record.get("approvers") or {}
    if isinstance(named, list):
        return [str(u) for u in named], []
    return list(named.get("users") or []), list(named.get("groups") or [])


def is_organisational(record: dict[str, Any]) -> bool:
    """Whether a pending approval is decided through the approval desk only (it names who
    decides, needs several, or refuses its run's starter): see ``ApprovalConfig.organisational``."""
    users, groups = approvers_of(record)
    escalated = record.get("escalate_to") or {}
    named = users or groups or escalated.get("users") or escalated.get("groups")
    return bool(named) or int(record.get("required") or 1) > 1 or record.get("allow_self_approval") is False


def _loads(value: str) -> Any:
    """An input's JSON; None (refused by ``take``) when it is not JSON."""
    try:
        return json.loads(value)
    except ValueError:
        return None


@dataclass
class Waiting:
    slug: str
    node: PlanNode | None
    path: tuple[int, ...]
    config: ApprovalConfig
    deadline: float | None
    future: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PrefectApprovals:
    """The approval gate of one flow run."""

    def __init__(
        self,
        run_id: str,
        *,
        signer: DecisionSigner,
        allow_unverified: bool = True,
        hold_s: float | None = None,
        busy: Callable[[], bool] = lambda: False,
        holding: Callable[[bool], None] = lambda held: None,
    ):
        """``signer``: checks the decisions FlowMaestro signed, signs the outcomes recorded.
        ``allow_unverified``: whether answers through Prefect (unsigned) are taken.
        ``hold_s``: how long the run stays paused in this process before it is released
        (Prefect suspend: the process lets go of it; resuming schedules it again and a
        worker continues it from its journal); None holds it until it is answered. Only
        runs of deployments can be released. ``busy``: whether other nodes of the run are
        running (then it is not released: they would be cut short). ``holding``: tells the
        worker the run lets go of it (``prefect_compat.release_flow_run``)."""
        self.run_id = uuid.UUID(run_id)
        self.holding = holding
        self.signer = signer
        self.allow_unverified = allow_unverified
        self.hold_s = hold_s
        self.busy = busy
        self.timed_release_after_s = max(prefect_compat.worker_prefetch_s(), WAKE_EARLY_S) + TIMED_RELEASE_MARGIN_S
        """An approval whose timeout is nearer than this is not released: a worker would take
        its run back at once."""
        self.paused_since: float | None = None
        self.waiting: dict[str, Waiting] = {}
        self.current: str | None = None
        """The slug of the approval Prefect is paused on."""
        self.current_key: str | None = None
        """The Prefect pause key of that pause (the slug, or a new one on a run executed again)."""
        self.pause_task: asyncio.Task[Any] | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.seen_decisions: set[str] = set()
        self.refused_inputs: set[uuid.UUID] = set()
        """Decision inputs refused (each logged once); the API may replace one with its own."""

    async def wait(
        self,
        execution: Any,
        node: PlanNode | None,
        frame: Any,
        config: ApprovalConfig,
        *,
        pause: dict[str, Any] | None = None,
    ) -> Completed:
        """Wait for the decision. ``pause``: a pause of the run rather than an approval
        (``flows.pauses``: ``{reason, ...}``), recorded and announced as such; ``node`` None
        for a person's pause of the whole run (recorded under the node id ``run``)."""
        node_id = node.id if node is not None else "run"
        path = tuple(frame.path) if node is not None else ()
        slug = approval_slug(node_id, path, getattr(config, "step", None))
        deadline = time.monotonic() + config.timeout_s if config.timeout_s else None
        timeout_at = (datetime.now(UTC) + timedelta(seconds=config.timeout_s)).isoformat() if config.timeout_s else None
        record = {
            "node_id": node_id,
            "path": list(path),
            "slug": slug,
            "message": config.message,
            "form": {k: v.model_dump() for k, v in config.form.items()},
            "schema": form_model(config.form, config.message).model_json_schema(),
            "approvers": config.approvers.model_dump(),
            "required": config.required,
            "allow_self_approval": config.allow_self_approval,
            "notify": [n.model_dump() for n in config.notify],
            "remind_every_s": config.remind_every_s,
            "escalate_after_s": config.escalate_after_s,
            "escalate_to": config.escalate_to.model_dump(),
            "requested_at": _now(),
            "timeout_at": timeout_at,
            **{k: getattr(config, k) for k in TOOL_CALL_FIELDS if hasattr(config, k)},
            **({"pause": pause} if pause is not None else {}),
        }
        async with get_client() as client:
            earlier = await self._earlier_decision(client, slug, config)
            if earlier is not None:  # the run executed again: a decision is never asked twice
                return self._outcome(config, earlier, self._timeout_connected(execution, node))
            try:
                await client.create_flow_run_input(self.run_id, key=PENDING + slug, value=json.dumps(record))
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 409:
                    raise  # 409: announced by an earlier execution of the run
                # The run executed again (a release, a crash): the timeout runs from the first
                # announcement, not from this execution.
                announced = _loads(await client.read_flow_run_input(self.run_id, PENDING + slug))
                first_timeout = announced.get("timeout_at") if isinstance(announced, dict) else None
                if config.timeout_s and isinstance(first_timeout, str):
                    timeout_at = first_timeout
                    left = (datetime.fromisoformat(first_timeout) - datetime.now(UTC)).total_seconds()
                    deadline = time.monotonic() + left
        waiting = Waiting(slug, node, path, config, deadline)
        first = not self.waiting
        self.waiting[slug] = waiting
        if pause is None:
            execution.bus.publish(
                "node:paused",
                node_id=node_id,
                path=path,
                message=config.message,
                form=record["schema"],
                timeout_at=timeout_at,
                approvers=config.approvers.model_dump(),
                required=config.required,
                allow_self_approval=config.allow_self_approval,
                escalate_to=config.escalate_to.model_dump(),
                approval_id=f"{self.run_id}.{slug}",
            )
        if pause is not None:  # a pause is announced whether or not an approval waits too
            execution.bus.publish("execution:paused", pending=[], pause=pause)
        elif first:
            execution.bus.publish("execution:paused", pending=[{"node_id": node_id, "path": list(path)}])
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.create_task(self._run())
        try:
            decision = await waiting.future  # raises Pause when the run is released
        finally:
            self.waiting.pop(slug, None)
        async with get_client() as client:
            await self._record_result(client, slug, decision)
        if not self.waiting or pause is not None:
            extra = {"pause": pause} if pause is not None else {}
            execution.bus.publish("execution:resumed", node_id=node_id, path=list(path), **extra)
        return self._outcome(config, decision, self._timeout_connected(execution, node))

    @staticmethod
    def _timeout_connected(execution: Any, node: PlanNode | None) -> bool:
        return node is not None and any(execution.plan.edges[e].handle == "timeout" for e in node.outgoing)

    @staticmethod
    def _outcome(config: ApprovalConfig, decision: dict[str, Any], timeout_connected: bool) -> Completed:
        if decision["outcome"] == "timeout":
            if not timeout_connected:
                raise NodeError(f"no decision within {config.timeout_s:g} s", error_type="ApprovalTimeout")
            output = {"approved": None, "input": {}, "decided_at": decision["decided_at"], "timed_out": True}
            return Completed(output=output, handles=frozenset({"timeout"}))
        values = dict(decision.get("input") or {})
        approved = bool(values.pop("approved", False))
        output = {
            "approved": approved,
            "input": values,
            "decided_at": decision["decided_at"],
            "decided_by": decision.get("decided_by"),
            "via": decision.get("via"),
        }
        if decision.get("decisions"):
            output["decisions"] = decision["decisions"]
        return Completed(output=output, handles=frozenset({"approved" if approved else "rejected"}))

    async def _earlier_decision(self, client: Any, slug: str, config: ApprovalConfig) -> dict[str, Any] | None:
        """The decision an earlier execution of the run recorded or received: its result, a
        decision sent through the API, or an answer given in the Prefect UI to any earlier
        pause (or suspension) of this approval; each only if ``take`` takes it."""
        for prefix in (RESULT, DECISION):
            found = await client.filter_flow_run_input(
                self.run_id, key_prefix=prefix + slug, limit=1, exclude_keys=set()
            )
            if found and found[0].key == prefix + slug:
                taken = self._take(slug, config, _loads(found[0].value), f"input {found[0].key}")
                if taken is not None:
                    return taken
        for key, value in await prefect_compat.read_pause_answers(client, self.run_id, slug):
            answer = _loads(value)
            if isinstance(answer, dict):
                answer = {k: v for k, v in answer.items() if k != "metadata"}
            taken = self._take(slug, config, {"outcome": "decided", "input": answer}, f"the Prefect answer {key}")
            if taken is not None:
                return taken
        return None

    def _take(self, slug: str, config: ApprovalConfig, raw: Any, source: str) -> dict[str, Any] | None:
        """The decision as the run takes it, or None (refused: logged, the approval waits)."""
        verdict = take(
            raw, config, run_id=str(self.run_id), slug=slug, signer=self.signer, allow_unverified=self.allow_unverified
        )
        if isinstance(raw, dict) and "signature" in raw and not self.signer.verifies(str(self.run_id), slug, raw):
            log.warning(
                "run %s: approval %s: the signature of the decision from %s does not verify (forged, or "
                "this worker's FLOWMAESTRO_DECISION_KEY differs from the API's): taken as unverified at "
                "most",
                self.run_id,
                slug,
                source,
            )
        if isinstance(verdict, Refused):
            log.warning(
                "run %s: approval %s: refused the decision from %s: %s", self.run_id, slug, source, verdict.reason
            )
            return None
        assert isinstance(verdict, Taken)
        return verdict.decision

    async def _record_result(self, client: Any, slug: str, decision: dict[str, Any]) -> None:
        """Record the outcome, signed: a run executed again takes it as it is. An input
        already under its key was not written by this approval (it would have been taken):
        it is replaced."""
        value = json.dumps(self.signer.sign(str(self.run_id), slug, decision))
        try:
            await client.create_flow_run_input(self.run_id, key=RESULT + slug, value=value)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            log.warning("run %s: approval %s: replacing an outcome someone else recorded", self.run_id, slug)
            await client.delete_flow_run_input(self.run_id, RESULT + slug)
            await client.create_flow_run_input(self.run_id, key=RESULT + slug, value=value)

    async def stop(self) -> None:
        """Stop serving approvals once the execution is over or was stopped (cancelled, handed
        back): the loop and Prefect's pause are ended and awaited, so that no task of the run
        outlives it ("Task was destroyed but it is pending") and no pause is left behind."""
        loop_task, self.loop_task = self.loop_task, None
        if loop_task is not None and not loop_task.done():
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
        if self.pause_task is not None and not self.pause_task.done():
            pause_task = self.pause_task
            try:
                async with get_client() as client:
                    await self._stop_pause(client)
            except Exception as exc:  # the run is handed back or ends anyway
                log.warning("run %s: could not end the approval's pause: %s", self.run_id, exc)
            await asyncio.gather(pause_task, return_exceptions=True)

    # --- the loop that serves every waiting approval of the run ---------------------------------

    async def _run(self) -> None:
        async with get_client() as client:
            while True:
                while self.waiting:
                    try:
                        await self._step(client)
                        if self._may_release():
                            await self._release(client)
                            return
                    except asyncio.CancelledError:
                        raise
                    except Exception:  # an API hiccup must not lose approvals: try again
                        log.exception("approval loop step failed")
                    await asyncio.sleep(DECISION_POLL_S)
                await self._stop_pause(client)
                # Something may have started waiting while the pause ended (a pause or a
                # breakpoint right after a fast node): it found this loop still running and
                # started none, so this one serves it. Checked with no await before the
                # return, so a later ``wait`` finds the loop done and starts another.
                if not self.waiting:
                    return

    def _may_release(self) -> bool:
        """Held long enough, nothing else running, and no timeout due before a worker would
        take the run back (the prefetch: a run taken early must not be let go of again)."""
        deadline = self._next_deadline()
        return (
            self.hold_s is not None
            and self.paused_since is not None
            and time.monotonic() - self.paused_since >= self.hold_s
            and self.current is not None
            and (deadline is None or deadline - time.monotonic() > self.timed_release_after_s)
            and not self.busy()
        )

    def _next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.waiting.values() if w.deadline is not None]
        return min(deadlines) if deadlines else None

    async def _release(self, client: Any) -> None:
        """Suspend the run on the approval Prefect shows (its form, a new pause key): the
        flow exits and the worker lets go of it. Every waiting approval's ``wait`` raises
        Prefect's ``Pause``, which ends the flow run Suspended; an answer (Prefect UI, API)
        schedules it again and the approval finds the answer when the run replays."""
        slug = self.current
        assert slug is not None
        model = form_model(self.waiting[slug].config.form, self.waiting[slug].config.message, base=RunInput)
        await self._stop_pause(client)
        deadline = self._next_deadline()
        try:
            if deadline is None:
                key = await prefect_compat.fresh_pause_key(client, self.run_id, slug)
                log.info("run %s: releasing it while approval %s waits (suspended on key %s)", self.run_id, slug, key)
                await prefect_compat.release_flow_run(
                    client, self.run_id, key, wait_for_input=model, holding=self.holding
                )
            else:
                # A timeout to keep: released as a delay is, scheduled for the earliest
                # timeout; any worker takes it then and the approval times out on replay
                # (its deadline is the first announcement's). A decision before then
                # schedules it at once (resume_approval).
                timeout_at = datetime.now(UTC) + timedelta(seconds=deadline - time.monotonic())
                until = timeout_at - timedelta(seconds=WAKE_EARLY_S)
                key = await prefect_compat.fresh_pause_key(client, self.run_id, prefect_compat.DELAY_RELEASE + slug)
                log.info("run %s: releasing it while approval %s waits, until %s", self.run_id, slug, until)
                await prefect_compat.release_flow_run(
                    client,
                    self.run_id,
                    key,
                    until=until,
                    holding=self.holding,
                    message=f"released while approval {slug} waits: times out at {timeout_at.isoformat()}",
                )
        except Pause as signal:
            for waiting in self.waiting.values():
                if not waiting.future.done():
                    waiting.future.set_exception(signal)

    async def _step(self, client: Any) -> None:
        # Decisions sent through resume_approval first: a person's answer through the API
        # to the approval Prefect is paused on must keep who decided.
        decisions = await client.filter_flow_run_input(
            self.run_id, key_prefix=DECISION, limit=200, exclude_keys=self.seen_decisions
        )
        for item in decisions:
            if item.id in self.refused_inputs:
                continue
            slug = item.key.removeprefix(DECISION)
            waiting = self.waiting.get(slug)
            if waiting is None:  # not waiting here: an approval that starts later reads it then
                self.seen_decisions.add(item.key)
                continue
            decision = self._take(slug, waiting.config, _loads(item.value), f"input {item.key}")
            if decision is None:
                self.refused_inputs.add(item.id)
                continue
            self.seen_decisions.add(item.key)
            self._resolve(slug, decision)
        if self.current is not None and self.pause_task is not None and self.pause_task.done():
            slug, self.current = self.current, None
            waiting = self.waiting.get(slug)
            if waiting is not None and not self.pause_task.cancelled() and self.pause_task.exception() is None:
                answer = self.pause_task.result()
                # Refused, the approval pauses again below (on a new key).
                decision = self._take(
                    slug,
                    waiting.config,
                    {"outcome": "decided", "input": answer.model_dump(exclude={"metadata"})},
                    "the Prefect pause's answer",
                )
                if decision is not None:
                    self._resolve(slug, decision)
        now = time.monotonic()
        for slug, waiting in list(self.waiting.items()):
            if waiting.deadline is not None and now >= waiting.deadline:
                self._resolve(slug, {"outcome": "timeout", "decided_at": _now(), "via": "timeout"})
        if self.current is not None and self.current not in self.waiting:
            await self._stop_pause(client)  # decided elsewhere or timed out: end Prefect's pause
        if self.current is None and self.waiting:
            slug = next(iter(self.waiting))
            self.current = slug
            self.current_key = await prefect_compat.fresh_pause_key(client, self.run_id, slug)
            waiting = self.waiting[slug]
            model = form_model(waiting.config.form, waiting.config.message, base=RunInput)
            self.pause_task = asyncio.create_task(
                pause_flow_run(
                    wait_for_input=model,
                    timeout=PREFECT_PAUSE_LIMIT_S,
                    poll_interval=PAUSE_POLL_S,
                    key=self.current_key,
                )
            )
            self.paused_since = time.monotonic()

    def _resolve(self, slug: str, decision: dict[str, Any]) -> None:
        waiting = self.waiting.get(slug)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result(decision)

    async def _stop_pause(self, client: Any) -> None:
        """End the Prefect pause of an approval decided another way. Only while the run
        is still paused on that very key, so a person's resume at the same moment wins."""
        task, key = self.pause_task, self.current_key
        self.current, self.current_key, self.pause_task = None, None, None
        if task is None or task.done() or key is None:
            return
        task.cancel()
        await prefect_compat.end_pause(client, self.run_id, key)


# --- answering approvals from another process (API, CLI) ---------------------------------------


@dataclass(frozen=True)
class ResumeAnswer:
    status: str  # accepted | refused | not_waiting
    message: str
    issues: tuple[dict[str, Any], ...] = ()


def _client(client: Any) -> Any:
    """The caller's Prefect client (the API's, kept open), else a new one: building one
    costs an SSL context and a connection pool."""
    return contextlib.nullcontext(client) if client is not None else get_client()


async def pending_approvals(run_id: str, client: Any = None) -> list[dict[str, Any]]:
    """Approvals of a run still waiting for a decision, oldest first."""
    async with _client(client) as client:
        pending = await _inputs(client, run_id, PENDING)
        done = await _inputs(client, run_id, RESULT)
        asked = await _inputs(client, run_id, DECISION)
    out = []
    for slug, record in pending.items():
        if slug not in done:
            out.append(
                {
                    k: record[k]
                    for k in ("node_id", "path", "slug", "message", "schema", "approvers", "requested_at", "timeout_at")
                }
                | {"form": record.get("form", {}), "approval_id": f"{run_id}.{slug}"}
                | {k: record[k] for k in ORGANISATIONAL_FIELDS if k in record}
                | {k: record[k] for k in (*TOOL_CALL_FIELDS, "pause") if k in record}
                | {"decision_sent": slug in asked}
            )
    return sorted(out, key=lambda r: r["requested_at"])


async def _inputs(client: Any, run_id: str, prefix: str) -> dict[str, Any]:
    found = await client.filter_flow_run_input(uuid.UUID(run_id), key_prefix=prefix, limit=1000, exclude_keys=set())
    return {item.key.removeprefix(prefix): json.loads(item.value) for item in found}


async def resume_approval(
    run_id: str,
    node_id: str,
    path: list[int] | None = None,
    values: dict[str, Any] | None = None,
    decided_by: str | None = None,
    client: Any = None,
    signer: DecisionSigner | None = None,
    decisions: list[dict[str, Any]] | None = None,
    desk: bool = False,
) -> ResumeAnswer:
    """Answer a waiting approval. ``path`` may be left out when the node waits once.

    ``signer``: the decision key of FlowMaestro's API/CLI. Signed, the run records the
    decision with ``decided_by``; without it the decision is like an answer through Prefect
    (unverified: ``via: "prefect-ui"``, and refused when the workers do not take those).

    Prefect failing (a 5xx, no connection) is raised as the client raised it, never answered
    as "not waiting": the API turns it into 503 naming Prefect (``RunService``)."""
    try:
        run_uuid = uuid.UUID(run_id)
    except ValueError:
        return ResumeAnswer("not_waiting", f"{run_id!r} is not a run id")
    waiting = [p for p in await pending_approvals(run_id, client) if p["node_id"] == node_id]
    if path is not None:
        waiting = [p for p in waiting if p["path"] == list(path)]
    if not waiting:
        return ResumeAnswer(
            "not_waiting",
            f"no approval of node {node_id!r}"
            f"{'' if path is None else f' at path {list(path)}'} is waiting in run {run_id}",
        )
    if len(waiting) > 1:
        paths = ", ".join(str(p["path"]) for p in waiting)
        return ResumeAnswer("refused", f"node {node_id!r} waits at several paths ({paths}); give the path")
    target = waiting[0]
    if not desk and is_organisational(target):
        # Who decides is checked by the approval desk (the API's /api/approvals), not here.
        return ResumeAnswer(
            "not_waiting",
            f"approval {target['slug']} of node {node_id!r} names who decides: "
            f"decide it through POST /api/approvals/{run_id}.{target['slug']}/decide",
        )
    if target["decision_sent"] and signer is None:
        return ResumeAnswer("not_waiting", "a decision for this approval was already sent")
    async with _client(client) as client:
        pending = await _inputs(client, run_id, PENDING)
        record = next(
            r
            for slug, r in pending.items()
            if r["node_id"] == node_id and r["path"] == target["path"] and r["slug"] == target["slug"]
        )
        model = form_model(record["form"], record["message"])
        try:
            checked = model.model_validate(values or {})
        except ValidationError as exc:
            issues = tuple(
                {"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors(include_url=False)
            )
            text = "; ".join(f"{i['field']}: {i['message']}" for i in issues)
            return ResumeAnswer("refused", f"the input does not fit the form: {text}", issues)
        slug = record["slug"]
        flow_run = await client.read_flow_run(run_uuid)
        state = flow_run.state
        if state is None or state.is_final():
            return ResumeAnswer("not_waiting", f"run {run_id} has ended ({state.name if state else 'unknown'})")
        # Written as a decision input for every approval, the one Prefect is paused on
        # included: the run picks it up (and ends Prefect's pause) within a second, and
        # the decision keeps who made it.
        decision: dict[str, Any] = {
            "outcome": "decided",
            "input": checked.model_dump(),
            "decided_at": _now(),
            "decided_by": decided_by,
            "via": "api",
        }
        if decisions:  # every person's decision of an approval several decide (api/approval_desk.py)
            decision["decisions"] = decisions
        if signer is not None:
            decision = signer.sign(str(run_uuid), slug, decision)
        try:
            await client.create_flow_run_input(run_uuid, key=DECISION + slug, value=json.dumps(decision))
        except httpx.HTTPStatusError as exc:
            # Only a 409 says the key exists (someone answered first). Anything else is Prefect
            # failing (a 5xx; connection errors are no HTTPStatusError): raised, for the caller
            # to answer "Prefect unavailable" (the API: 503), never "already sent".
            if exc.response.status_code != 409:
                raise
            if signer is None or not await _replace_unsigned(client, run_uuid, slug, decision, signer):
                return ResumeAnswer("not_waiting", "a decision for this approval was already sent")
        if prefect_compat.is_released(state) or prefect_compat.is_delay_released(state):
            # Released by its worker (suspended): nobody polls for the decision, so schedule
            # the run again; a worker replays it and the approval reads the decision.
            await prefect_compat.schedule_released(client, run_uuid, "approval answered")
            return ResumeAnswer(
                "accepted", "approval answered; the run is scheduled again and continues when a worker takes it"
            )
    return ResumeAnswer("accepted", "approval answered; the run resumes within a second")


async def _replace_unsigned(
    client: Any, run_uuid: uuid.UUID, slug: str, decision: dict[str, Any], signer: DecisionSigner
) -> bool:
    """Put the API's signed decision in place of one under the same key that FlowMaestro did
    not sign (written through Prefect's API: a run that refuses it, or has not read it yet,
    would otherwise never see the API's). False when the one there is signed: it stands."""
    try:
        existing = json.loads(await client.read_flow_run_input(run_uuid, DECISION + slug))
    except ValueError:
        existing = None
    if isinstance(existing, dict) and signer.verifies(str(run_uuid), slug, existing):
        return False
    log.warning("run %s: approval %s: replacing an unsigned decision with the API's", run_uuid, slug)
    await client.delete_flow_run_input(run_uuid, DECISION + slug)
    await client.create_flow_run_input(run_uuid, key=DECISION + slug, value=json.dumps(decision))
    return True
