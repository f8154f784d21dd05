"""Budgets: an owner's caps on what model calls spend (USD and/or tokens), per run, per
workflow or for the whole owner, over a run, a UTC day or a UTC month.

What a window has spent is one row of ``budget_spend`` per (budget, window), changed only by
single atomic ``UPDATE`` statements, so every worker process (on any machine) sees and
charges the same amounts: no process keeps a counter.

A model request is admitted (``BudgetLedger.admit``) before it is sent and charged with its
real usage after (``charge``). Admission is what keeps concurrent requests from overspending
by more than one request: a request is admitted when the window has room for every request
in flight plus this one at the size of the largest request seen so far in the window, or,
when it does not (or no request's size is known yet), only when none is in flight and the
window is not spent. Near the cap, requests therefore go one at a time, and the last one
admitted is the only one that can go over.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import BigInteger, Float, Integer, String, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from store.database import as_utc
from store.db import Base, Sessions, utcnow
from store.errors import Invalid, NotFound

Scope = Literal["run", "workflow", "owner"]
Period = Literal["run", "day", "month"]
OnExceed = Literal["fail", "pause"]
Admission = Literal["admitted", "exceeded", "busy"]


class BudgetRow(Base):
    __tablename__ = "budgets"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    workflow_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    period: Mapped[str] = mapped_column(String(16))
    max_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    on_exceed: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BudgetSpendRow(Base):
    __tablename__ = "budget_spend"
    budget_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    """``run:<run id>``, ``day:2026-12-06`` or ``month:2026-12`` (UTC)."""
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    largest_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    largest_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Budget:
    id: str
    owner: str
    scope: str
    workflow_id: str | None
    period: str
    max_cost_usd: float | None
    max_tokens: int | None
    on_exceed: str
    created_at: datetime
    updated_at: datetime

    def applies_to(self, workflow_id: str | None) -> bool:
        """Whether a run of ``workflow_id`` counts against it (a run or owner budget without a
        workflow: every run of the owner)."""
        return self.workflow_id is None or self.workflow_id == workflow_id

    def window(self, run_id: str, now: datetime) -> str:
        if self.period == "run":
            return f"run:{run_id}"
        if self.period == "day":
            return f"day:{now:%Y-%m-%d}"
        return f"month:{now:%Y-%m}"

    def exceeded_by(self, spend: Spend) -> str | None:
        """What of the budget ``spend`` has used up, in words; None: there is room."""
        if self.max_cost_usd is not None and spend.cost_usd >= self.max_cost_usd:
            return f"spent {spend.cost_usd:.6f} USD of {self.max_cost_usd:g}"
        if self.max_tokens is not None and spend.tokens >= self.max_tokens:
            return f"used {spend.tokens} tokens of {self.max_tokens}"
        return None


@dataclass(frozen=True)
class Spend:
    window: str
    cost_usd: float = 0.0
    tokens: int = 0
    requests: int = 0
    in_flight: int = 0


def _budget(row: BudgetRow) -> Budget:
    return Budget(
        row.id,
        row.owner,
        row.scope,
        row.workflow_id,
        row.period,
        row.max_cost_usd,
        row.max_tokens,
        row.on_exceed,
        as_utc(row.created_at),
        as_utc(row.updated_at),
    )


def _spend(row: BudgetSpendRow) -> Spend:
    return Spend(row.period_key, row.cost_usd, row.tokens, row.requests, row.in_flight)


def checked(fields: dict[str, Any]) -> None:
    """The rules across fields (each field's own are the API schema's): 422 naming the field."""
    scope, period = fields.get("scope"), fields.get("period")
    if scope == "workflow" and not fields.get("workflow_id"):
        raise Invalid(
            "a workflow budget names its workflow",
            [{"field": "workflow_id", "message": "required when scope is 'workflow'"}],
        )
    if scope == "run" and period != "run":
        raise Invalid(
            "a run budget counts each run on its own: its period is 'run'",
            [{"field": "period", "message": "must be 'run' when scope is 'run'"}],
        )
    if scope == "owner" and fields.get("workflow_id"):
        raise Invalid(
            "an owner budget counts every workflow of the owner",
            [{"field": "workflow_id", "message": "not allowed when scope is 'owner'"}],
        )
    if fields.get("max_cost_usd") is None and fields.get("max_tokens") is None:
        raise Invalid(
            "a budget caps cost, tokens or both",
            [{"field": "max_cost_usd", "message": "give max_cost_usd, max_tokens or both"}],
        )


class Budgets:
    """The budgets of owners (the API's)."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def create(self, owner: str, fields: dict[str, Any]) -> Budget:
        checked(fields)
        now = utcnow()
        row = BudgetRow(id=str(uuid.uuid4()), owner=owner, created_at=now, updated_at=now, **fields)
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return _budget(row)

    async def of_owner(self, owner: str) -> list[Budget]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(BudgetRow).where(BudgetRow.owner == owner).order_by(BudgetRow.created_at, BudgetRow.id)
            )
            return [_budget(row) for row in rows]

    async def get(self, owner: str, budget_id: str) -> Budget:
        async with self.sessions() as session:
            row = await session.get(BudgetRow, budget_id)
            if row is None or row.owner != owner:
                raise NotFound(f"no budget {budget_id}")
            return _budget(row)

    async def update(self, owner: str, budget_id: str, changes: dict[str, Any]) -> Budget:
        async with self.sessions() as session:
            row = await session.get(BudgetRow, budget_id)
            if row is None or row.owner != owner:
                raise NotFound(f"no budget {budget_id}")
            merged = {**{k: getattr(row, k) for k in FIELDS}, **changes}
            checked(merged)
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            await session.commit()
            return _budget(row)

    async def delete(self, owner: str, budget_id: str) -> None:
        async with self.sessions() as session:
            row = await session.get(BudgetRow, budget_id)
            if row is None or row.owner != owner:
                raise NotFound(f"no budget {budget_id}")
            await session.delete(row)
            await session.execute(delete(BudgetSpendRow).where(BudgetSpendRow.budget_id == budget_id))
            await session.commit()

    async def spent(self, budget: Budget, limit: int = 20) -> list[Spend]:
        """The windows that spent most recently, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(BudgetSpendRow)
                .where(BudgetSpendRow.budget_id == budget.id)
                .order_by(BudgetSpendRow.updated_at.desc(), BudgetSpendRow.period_key.desc())
                .limit(limit)
            )
            return [_spend(row) for row in rows]


FIELDS = ("scope", "workflow_id", "period", "max_cost_usd", "max_tokens", "on_exceed")


class BudgetLedger:
    """Admission and charges of model requests (the workers')."""

    def __init__(self, sessions: Sessions):
        self.sessions = sessions

    async def applicable(self, owner: str, workflow_id: str | None) -> list[Budget]:
        async with self.sessions() as session:
            rows = await session.scalars(select(BudgetRow).where(BudgetRow.owner == owner))
            return [b for b in map(_budget, rows) if b.applies_to(workflow_id)]

    async def admit(self, budget: Budget, window: str) -> tuple[Admission, Spend]:
        """One attempt: ``admitted`` (counted in flight: ``charge`` or ``give_back`` follows),
        ``exceeded`` (the window is spent), or ``busy`` (others in flight use the room left:
        ask again shortly)."""
        spend = BudgetSpendRow.__table__.c
        room = [_room(spend.cost_usd, spend.largest_cost_usd, budget.max_cost_usd)]
        room.append(_room(spend.tokens, spend.largest_tokens, budget.max_tokens))
        async with self.sessions() as session:
            await session.execute(_insert_missing(session.get_bind().dialect.name, budget.id, window))
            admitted = await session.execute(
                update(BudgetSpendRow)
                .where(BudgetSpendRow.budget_id == budget.id, BudgetSpendRow.period_key == window, *room)
                .values(in_flight=BudgetSpendRow.in_flight + 1, updated_at=utcnow())
            )
            await session.commit()
            row = await session.get(BudgetSpendRow, (budget.id, window), populate_existing=True)
            assert row is not None
            current = _spend(row)
        if admitted.rowcount == 1:  # type: ignore[attr-defined]
            return "admitted", current
        return ("exceeded" if budget.exceeded_by(current) else "busy"), current

    async def charge(self, budget: Budget, window: str, cost_usd: float, tokens: int, *, admitted: bool = True) -> None:
        """What a request really used (one statement: concurrent charges add up); ``admitted``:
        it was counted in flight (not when a person let the run go past the budget)."""
        c = BudgetSpendRow
        async with self.sessions() as session:
            await session.execute(
                update(c)
                .where(c.budget_id == budget.id, c.period_key == window)
                .values(
                    cost_usd=c.cost_usd + cost_usd,
                    tokens=c.tokens + tokens,
                    requests=c.requests + 1,
                    in_flight=_decremented(c.in_flight) if admitted else c.in_flight,
                    largest_cost_usd=_greatest(c.largest_cost_usd, cost_usd),
                    largest_tokens=_greatest(c.largest_tokens, tokens),
                    updated_at=utcnow(),
                )
            )
            await session.commit()

    async def give_back(self, budget: Budget, window: str) -> None:
        """An admitted request that was never answered (it failed): no longer in flight."""
        c = BudgetSpendRow
        async with self.sessions() as session:
            await session.execute(
                update(c)
                .where(c.budget_id == budget.id, c.period_key == window)
                .values(in_flight=_decremented(c.in_flight), updated_at=utcnow())
            )
            await session.commit()


def _room(spent: Any, largest: Any, cap: float | int | None) -> ColumnElement[bool]:
    if cap is None:
        return and_(True)
    in_flight = BudgetSpendRow.__table__.c.in_flight
    alone = and_(in_flight == 0, spent < cap)
    with_others = and_(largest > 0, spent + (in_flight + 1) * largest <= cap)
    return or_(alone, with_others)


def _decremented(column: Any) -> Any:
    from sqlalchemy import case

    return case((column > 0, column - 1), else_=0)


def _greatest(column: Any, value: float | int) -> Any:
    from sqlalchemy import case

    return case((column < value, value), else_=column)


def _insert_missing(dialect: str, budget_id: str, window: str) -> Any:
    values = {
        "budget_id": budget_id,
        "period_key": window,
        "cost_usd": 0.0,
        "tokens": 0,
        "requests": 0,
        "in_flight": 0,
        "largest_cost_usd": 0.0,
        "largest_tokens": 0,
        "updated_at": utcnow(),
    }
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(BudgetSpendRow).values(**values).on_conflict_do_nothing(index_elements=["budget_id", "period_key"])
