"""Budgets around every model request of ``llm``, ``router`` and ``agent`` nodes.

``budgeted_request`` is entered before a request is sent and told its real usage after:
each budget of the run's owner that applies to the run's workflow admits the request first
(``store.budgets.BudgetLedger``: the database, shared by every worker), and is charged with
the tokens of the reply and its cost from the price table (``FLOWMAESTRO_LLM_PRICES``;
a model without a price costs nothing there, its tokens still count).

Over a budget, ``on_exceed: fail`` fails the node (``budget_exceeded``, not retried);
``pause`` asks a person through the run's approvals (``kind: "budget"``): approved, the run
goes on past that budget (still charged, never asked again for it); rejected or timed out,
the node fails as with ``fail``. Only runs on workers have budgets (not ``flowmaestro run``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from node_handlers.approval import ApprovalConfig
from node_handlers.base import NodeContext, NodeError
from node_handlers.services import HandlerServices
from store.budgets import Budget, BudgetLedger
from store.db import sessions, utcnow

log = logging.getLogger("flowmaestro.budgets")

BUSY_POLL_S = 0.1
"""How soon a request that others in flight left no room for asks again."""


class BudgetExceeded(NodeError):
    def __init__(self, message: str, budget_id: str):
        super().__init__(message, error_type="budget_exceeded", details={"budget_id": budget_id})


class BudgetApproval(ApprovalConfig):
    """What a run asks a person when one of its budgets is spent (``on_exceed: pause``)."""

    kind: Literal["budget"] = "budget"
    step: str
    budget_id: str
    spent: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Usage:
    """What the request used: set by the caller once the reply is in."""

    tokens: int = 0
    cost_usd: float = 0.0
    answered: bool = False


@dataclass
class _Held:
    budget: Budget
    window: str
    admitted: bool
    """False: a person let the run go past it; charged, never counted in flight."""


@contextlib.asynccontextmanager
async def budgeted_request(ctx: NodeContext, services: HandlerServices) -> AsyncIterator[Usage]:
    """Admission before the request, the charge after it (``Usage`` filled in by the caller)."""
    usage = Usage()
    # Budgets live in the store of the processes that run saved workflows (workers: they are
    # the ones with a credential store); a local run or a handler called alone has none.
    if ctx.owner is None or services.credentials is None:
        yield usage
        return
    ledger = BudgetLedger(sessions(services.database()))
    budgets = await ledger.applicable(ctx.owner, ctx.workflow_id)
    if not budgets:
        yield usage
        return
    held: list[_Held] = []
    try:
        for budget in budgets:
            held.append(await _admit(ledger, budget, ctx, services.budget_waivers))
        yield usage
    finally:
        await asyncio.shield(_settle(ledger, held, usage))


async def _admit(ledger: BudgetLedger, budget: Budget, ctx: NodeContext, waived: set[tuple[str, str]]) -> _Held:
    window = budget.window(ctx.run_id, utcnow())
    if (ctx.run_id, budget.id) in waived:
        return _Held(budget, window, admitted=False)
    while True:
        result, spend = await ledger.admit(budget, window)
        if result == "admitted":
            return _Held(budget, window, admitted=True)
        if result == "busy":
            await asyncio.sleep(BUSY_POLL_S)
            continue
        what = budget.exceeded_by(spend) or "spent"
        message = f"budget {budget.id} ({budget.scope}, per {budget.period}) is exceeded: {what}"
        if budget.on_exceed == "pause":
            approval = BudgetApproval(
                message=f"{message}. Approve to let this run go on past it.",
                step=f"budget-{budget.id}-{window}",
                budget_id=budget.id,
                spent={"cost_usd": spend.cost_usd, "tokens": spend.tokens, "window": window},
            )
            decided = await ctx.capabilities.pause_for_person(approval)
            output = decided.output if isinstance(decided.output, dict) else {}
            if output.get("approved") is True:
                log.info("run %s: a person let it go past budget %s", ctx.run_id, budget.id)
                waived.add((ctx.run_id, budget.id))
                return _Held(budget, window, admitted=False)
            message = f"{message}; not approved"
        raise BudgetExceeded(message, budget.id)


async def _settle(ledger: BudgetLedger, held: list[_Held], usage: Usage) -> None:
    for item in held:
        try:
            if usage.answered:
                await ledger.charge(item.budget, item.window, usage.cost_usd, usage.tokens, admitted=item.admitted)
            elif item.admitted:
                await ledger.give_back(item.budget, item.window)
        except Exception:  # the reply is in: a charge lost to a database hiccup must not fail the node
            log.exception("budget %s: could not record a request's usage", item.budget.id)


def record_usage(usage: Usage, reply_usage: dict[str, Any], cost_usd: float | None) -> None:
    usage.tokens = int(reply_usage.get("input_tokens") or 0) + int(reply_usage.get("output_tokens") or 0)
    usage.cost_usd = float(cost_usd or 0.0)
    usage.answered = True
