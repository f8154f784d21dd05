"""The approval desk: approvals decided by the people they name, whoever owns the run.

An approval node may name its approvers (``{users, groups}``), how many must approve
(``required``) and whether the identity that started the run may decide
(``allow_self_approval``). The run announces each waiting approval in Prefect
(``flows.approvals``: the ``fm-pending-<slug>`` input, with those fields); this desk:

- lists the approvals waiting in paused runs that a caller may decide (``pending``);
- takes one person's decision (``decide``): 403 for someone who is not an approver (or
  who started the run when self-approval is off), 422 for an input that does not fit the
  form, 409 for a second decision by the same person (``store.approval_votes``: one row per
  person, whichever API process takes it);
- once ``required`` approvals are in, or at the first rejection, writes the final decision
  the run takes, signed, with every person's decision (``flows.approvals.resume_approval``).

An identity is the owner name of the caller's API key. Groups are the run owner's
(``store.approval_groups``), read at each decision: a member removed can no longer decide.
The identity that started a run is its owner (only the owner's keys execute a run).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from pydantic import ValidationError

from api.errors import ApiError
from api.prefect_gateway import PrefectGateway
from flows.approvals import approvers_of, pending_approvals, resume_approval
from flows.decisions import DecisionSigner
from flows.prefect_compat import DELAY_RELEASE_STATE, is_delay_released
from node_handlers.approval import form_model
from store.approval_groups import ApprovalGroups
from store.approval_votes import ApprovalVotes, Vote
from store.audit import AuditLog
from store.db import Sessions
from store.errors import Invalid, NotFound
from store.run_owners import run_owners

log = logging.getLogger("flowmaestro.approvals")

MAX_PAUSED_RUNS = 200
"""Paused runs read per listing (each costs three reads of its Prefect inputs)."""


def escalated(record: dict[str, Any], now: datetime) -> bool:
    """Whether the approval's escalation time has come."""
    after = record.get("escalate_after_s")
    asked = record.get("requested_at")
    if not after or not isinstance(asked, str):
        return False
    return (now - datetime.fromisoformat(asked)).total_seconds() >= float(after)


def approval_id(run_id: str, slug: str) -> str:
    """An approval's id: its run and its slug (unique in the run)."""
    return f"{run_id}.{slug}"


def split_id(value: str) -> tuple[str, str]:
    run_id, _, slug = value.partition(".")
    try:
        uuid.UUID(run_id)
    except ValueError:
        raise NotFound(f"approval {value} not found") from None
    if not slug:
        raise NotFound(f"approval {value} not found")
    return run_id, slug


@dataclass(frozen=True)
class Deciders:
    """Who may decide one approval, resolved now."""

    allowed: frozenset[str]
    starter: str
    allow_self: bool

    def refusal(self, identity: str) -> str | None:
        if identity not in self.allowed:
            return f"{identity} is not an approver of this approval"
        if not self.allow_self and identity == self.starter:
            return f"{identity} started this run and the approval does not allow self-approval"
        return None

    def awaiting(self, votes: list[Vote]) -> list[str]:
        decided = {v.by for v in votes}
        return sorted(i for i in self.allowed if i not in decided and self.refusal(i) is None)


class ApprovalDesk:
    def __init__(
        self,
        *,
        prefect: PrefectGateway,
        sessions: Sessions,
        groups: ApprovalGroups,
        votes: ApprovalVotes,
        signer: DecisionSigner,
    ):
        self.prefect = prefect
        self.sessions = sessions
        self.groups = groups
        self.votes = votes
        self.signer = signer

    async def deciders(self, owner: str, record: dict[str, Any]) -> Deciders:
        """Who may decide now: the approvers (the run's owner when none are named), and
        ``escalate_to`` once ``escalate_after_s`` has passed since the approval was asked."""
        users, groups = approvers_of(record)
        allowed = set(users) if users or groups else {owner}  # no approvers: the owner, as ever
        if escalated(record, datetime.now(UTC)):
            more = record.get("escalate_to") or {}
            users, groups = users + list(more.get("users") or []), groups + list(more.get("groups") or [])
            allowed.update(users)
        for members in (await self.groups.members(owner, groups)).values():
            allowed.update(members)
        return Deciders(frozenset(allowed), owner, record.get("allow_self_approval") is not False)

    def _view(
        self, run_id: str, owner: str, record: dict[str, Any], deciders: Deciders, votes: list[Vote]
    ) -> dict[str, Any]:
        required = int(record.get("required") or 1)
        users, groups = approvers_of(record)
        return {
            "id": approval_id(run_id, record["slug"]),
            "execution_id": record.get("execution_id", run_id),
            "owner": owner,
            "node_id": record["node_id"],
            "path": record["path"],
            "message": record.get("message"),
            "form": record.get("schema"),
            "approvers": {"users": users, "groups": groups},
            "required": required,
            "allow_self_approval": deciders.allow_self,
            "requested_at": record.get("requested_at"),
            "timeout_at": record.get("timeout_at"),
            "decisions": [v.as_json() for v in votes],
            "approvals": sum(1 for v in votes if v.approved),
            "awaiting": deciders.awaiting(votes),
        }

    async def waiting(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every approval waiting in a paused run (suspended ones included) or a run released
        until an approval's timeout: (run id, owner, pending record)."""
        paused = await self.prefect.call(
            "read paused runs",
            lambda client: client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                ),
                limit=MAX_PAUSED_RUNS,
            ),
        )
        # Runs released until an approval's timeout are Scheduled (as delays are) meanwhile.
        released = await self.prefect.call(
            "read released runs",
            lambda client: client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=[DELAY_RELEASE_STATE]))
                ),
                limit=MAX_PAUSED_RUNS,
            ),
        )
        waiting = [f for f in paused] + [f for f in released if is_delay_released(f.state)]
        owners = await run_owners(self.sessions, [str(f.id) for f in waiting])
        found: list[tuple[str, str, dict[str, Any]]] = []
        for run_id, (execution_id, owner) in owners.items():
            found.extend((run_id, owner, r | {"execution_id": execution_id}) for r in await self._pending_of(run_id))
        return found

    async def _pending_of(self, run_id: str) -> list[dict[str, Any]]:
        return await self.prefect.call("read approvals", lambda client: pending_approvals(run_id, client))

    async def pending(self, identity: str) -> list[dict[str, Any]]:
        """The approvals waiting that ``identity`` may decide and has not decided yet,
        oldest first."""
        found = await self.waiting()
        votes = await self.votes.of([approval_id(run_id, r["slug"]) for run_id, _, r in found])
        out = []
        for run_id, owner, record in found:
            deciders = await self.deciders(owner, record)
            mine = votes.get(approval_id(run_id, record["slug"]), [])
            if record.get("decision_sent"):
                continue  # decided; the run takes it within a second
            if deciders.refusal(identity) is None and all(v.by != identity for v in mine):
                out.append(self._view(run_id, owner, record, deciders, mine))
        return sorted(out, key=lambda a: a["requested_at"] or "")

    async def _waiting(self, approval: str) -> tuple[str, str, dict[str, Any]]:
        """(run id, run owner, pending record) of an approval still waiting; NotFound, the
        same for an id nobody has, otherwise."""
        run_id, slug = split_id(approval)
        known = (await run_owners(self.sessions, [run_id])).get(run_id)
        if known is None:
            raise NotFound(f"approval {approval} not found")
        execution_id, owner = known
        records = await self.prefect.call("read approvals", lambda client: pending_approvals(run_id, client))
        record = next((r for r in records if r["slug"] == slug), None)
        if record is None:
            raise NotFound(f"approval {approval} not found")
        return run_id, owner, record | {"execution_id": execution_id}

    async def get(self, identity: str, approval: str) -> dict[str, Any]:
        """A waiting approval as its approvers and the run's owner see it: who decided, who
        is still awaited. Anyone else is told it is not found."""
        run_id, owner, record = await self._waiting(approval)
        deciders = await self.deciders(owner, record)
        if identity != owner and identity not in deciders.allowed:
            raise NotFound(f"approval {approval} not found")
        votes = (await self.votes.of([approval])).get(approval, [])
        return self._view(run_id, owner, record, deciders, votes)

    async def _tell_prefect(self, run_id: str, message: str) -> None:
        """A line in the run's Prefect logs, so the Prefect UI shows who decided and who is
        awaited. Best effort: the decision stands without it."""
        line = LogCreate(
            name="flowmaestro.approvals",
            level=logging.INFO,
            message=message,
            timestamp=datetime.now(UTC),
            flow_run_id=uuid.UUID(run_id),
        )
        try:
            await self.prefect.call("log the decision", lambda client: client.create_logs([line]))
        except Exception as exc:
            log.warning("run %s: could not log the approval decision in Prefect: %s", run_id, exc)

    async def decide(self, identity: str, approval: str, approved: bool, values: dict[str, Any]) -> dict[str, Any]:
        run_id, owner, record = await self._waiting(approval)
        deciders = await self.deciders(owner, record)
        refusal = deciders.refusal(identity)
        if refusal is not None:
            raise ApiError(403, refusal)
        answer = {"approved": approved, **values}
        try:
            form_model(record.get("form") or {}, record.get("message")).model_validate(answer, strict=True)
        except ValidationError as exc:
            issues = [
                {"field": "input." + ".".join(map(str, e["loc"])), "message": e["msg"], "code": "refused"}
                for e in exc.errors(include_url=False)
            ]
            raise Invalid("the input does not fit the approval's form", issues) from None
        await self.votes.add(approval, run_id, identity, approved, values)
        votes = (await self.votes.of([approval])).get(approval, [])
        required = int(record.get("required") or 1)
        approvals = sum(1 for v in votes if v.approved)
        status = "waiting"
        if not approved or approvals >= required:
            status = "approved" if approved else "rejected"
            decisions = [v.as_json() for v in votes]
            result = await self.prefect.call(
                "answer the approval",
                lambda client: resume_approval(
                    run_id,
                    record["node_id"],
                    record["path"],
                    answer,
                    decided_by=identity,
                    client=client,
                    signer=self.signer,
                    decisions=decisions,
                    desk=True,
                ),
            )
            if result.status == "refused":
                raise Invalid(result.message)
            if result.status == "not_waiting":
                # Another final decision got there first (two people at the same moment).
                status = "closed"
        view = self._view(run_id, owner, record, deciders, votes)
        awaiting = ", ".join(view["awaiting"]) or "nobody"
        await self._tell_prefect(
            run_id,
            f"approval {record['node_id']} {list(record['path']) or ''}: {identity} "
            f"{'approved' if approved else 'rejected'} ({approvals} of {required} approvals); "
            + (f"{status}" if status != "waiting" else f"awaiting {awaiting}"),
        )
        # The decision, never the form's values; the run's owner sees it in their log.
        await AuditLog(self.sessions).append(
            owner=owner,
            actor=identity,
            action="approval.decide",
            target_type="execution",
            target_id=record["execution_id"],  # run_id is its flow run's: the approval's id names that
            details={
                "node_id": record["node_id"],
                "path": list(record["path"]),
                "approved": approved,
                "answer": status,
            },
        )
        return view | {"status": status}
