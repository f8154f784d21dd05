"""Budgets of the caller: caps on what model calls of their runs spend (``store.budgets``),
checked by the workers before every model request (``node_handlers.budgets``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Owner
from api.deps import WorkflowsDep
from api.schemas import ErrorBody, RequestBody, Timestamp
from store.budgets import Budget, Budgets, Spend
from store.errors import Invalid, NotFound

router = APIRouter(prefix="/api/budgets", tags=["budgets"])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


class BudgetBody(RequestBody):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"scope": "owner", "period": "month", "max_cost_usd": 50, "on_exceed": "pause"}]
        },
    )
    scope: Literal["run", "workflow", "owner"] = Field(
        description="run: each run on its own; workflow: the runs of workflow_id; owner: all your runs."
    )
    workflow_id: str | None = Field(
        None, max_length=36, description="Required for scope workflow; for scope run, only that workflow's runs."
    )
    period: Literal["run", "day", "month"] = Field(description="The window spending is counted over (UTC).")
    max_cost_usd: float | None = Field(None, gt=0, le=1e9, description="USD, priced by FLOWMAESTRO_LLM_PRICES.")
    max_tokens: int | None = Field(None, gt=0, le=10**15, description="Input plus output tokens.")
    on_exceed: Literal["fail", "pause"] = Field(
        "fail", description="fail: the node fails (budget_exceeded); pause: a person may let the run go on."
    )


class BudgetPatch(RequestBody):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [{"max_cost_usd": 80}]})
    workflow_id: str | None = Field(None, max_length=36)
    period: Literal["run", "day", "month"] | None = None
    max_cost_usd: float | None = Field(None, gt=0, le=1e9, description="null removes the cost cap.")
    max_tokens: int | None = Field(None, gt=0, le=10**15, description="null removes the token cap.")
    on_exceed: Literal["fail", "pause"] | None = None


class SpendOut(BaseModel):
    window: str = Field(description="run:<execution id>, day:YYYY-MM-DD or month:YYYY-MM (UTC).")
    cost_usd: float
    tokens: int
    requests: int
    in_flight: int


class BudgetOut(BaseModel):
    id: str
    scope: str
    workflow_id: str | None
    period: str
    max_cost_usd: float | None
    max_tokens: int | None
    on_exceed: str
    created_at: Timestamp
    updated_at: Timestamp


class BudgetWithSpend(BudgetOut):
    spent: list[SpendOut] = Field(description="The windows that spent most recently (up to 20), newest first.")


def _budgets(request: Request) -> Budgets:
    budgets: Budgets = request.app.state.budgets
    return budgets


BudgetsDep = Annotated[Budgets, Depends(_budgets)]


def _out(budget: Budget) -> dict[str, Any]:
    return {
        "id": budget.id,
        "scope": budget.scope,
        "workflow_id": budget.workflow_id,
        "period": budget.period,
        "max_cost_usd": budget.max_cost_usd,
        "max_tokens": budget.max_tokens,
        "on_exceed": budget.on_exceed,
        "created_at": budget.created_at,
        "updated_at": budget.updated_at,
    }


def _spend(spend: Spend) -> SpendOut:
    return SpendOut(
        window=spend.window,
        cost_usd=spend.cost_usd,
        tokens=spend.tokens,
        requests=spend.requests,
        in_flight=spend.in_flight,
    )


async def _check_workflow(owner: str, workflow_id: str | None, workflows: WorkflowsDep) -> None:
    if workflow_id is None:
        return
    try:
        await workflows.get(owner, workflow_id)
    except NotFound:
        raise Invalid(
            f"no workflow {workflow_id}", [{"field": "workflow_id", "message": "not a workflow of yours"}]
        ) from None


@router.post("", status_code=201, response_model=BudgetOut, responses=_errors(401, 422, 503))
async def create_budget(body: BudgetBody, owner: Owner, budgets: BudgetsDep, workflows: WorkflowsDep) -> BudgetOut:
    """A budget of yours: it applies to the next model request of your runs."""
    await _check_workflow(owner, body.workflow_id, workflows)
    return BudgetOut(**_out(await budgets.create(owner, body.model_dump())))


@router.get("", response_model=list[BudgetOut], responses=_errors(401, 503))
async def list_budgets(owner: Owner, budgets: BudgetsDep) -> list[BudgetOut]:
    return [BudgetOut(**_out(b)) for b in await budgets.of_owner(owner)]


@router.get("/{budget_id}", response_model=BudgetWithSpend, responses=_errors(401, 404, 503))
async def get_budget(budget_id: str, owner: Owner, budgets: BudgetsDep) -> BudgetWithSpend:
    """The budget with what its recent windows spent."""
    budget = await budgets.get(owner, budget_id)
    return BudgetWithSpend(**_out(budget), spent=[_spend(s) for s in await budgets.spent(budget)])


@router.patch("/{budget_id}", response_model=BudgetOut, responses=_errors(401, 404, 422, 503))
async def update_budget(
    budget_id: str, body: BudgetPatch, owner: Owner, budgets: BudgetsDep, workflows: WorkflowsDep
) -> BudgetOut:
    """Change the fields given (its scope stays: make another budget for another scope)."""
    changes = body.model_dump(exclude_unset=True)
    cleared = [name for name in ("period", "on_exceed") if name in changes and changes[name] is None]
    if cleared:  # a cap may be removed with null; these always have a value
        raise Invalid(
            f"{', '.join(cleared)} cannot be null: give a value or leave it out",
            [{"field": f"body.{name}", "message": "cannot be null"} for name in cleared],
        )
    await _check_workflow(owner, changes.get("workflow_id"), workflows)
    return BudgetOut(**_out(await budgets.update(owner, budget_id, changes)))


@router.delete("/{budget_id}", status_code=204, responses=_errors(401, 404, 503))
async def delete_budget(budget_id: str, owner: Owner, budgets: BudgetsDep) -> Response:
    """The budget no longer applies; what it recorded as spent goes with it."""
    await budgets.delete(owner, budget_id)
    return Response(status_code=204)
