"""The condition node: ordered expressions, first match or all matches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from builder.catalog import EXPRESSION, UNIQUE_KEYS, NodeConfig
from node_handlers.base import ERROR_HANDLE, Completed, HandleDoc, NodeContext, NodeHandler

HANDLE_ID = r"^[A-Za-z0-9_-]{1,64}$"
"""The id of a condition or a route, which names a handle (``condition-<id>``, ``route-<id>``)."""
FALSY_TEXT = frozenset({"", "false", "0", "no", "off", "none", "null"})


def check_unique_ids(ids: list[str], what: str) -> None:
    """Refuse ids that name the same handle twice (``what``: "condition", "route")."""
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{what} ids must be unique; repeated: {', '.join(duplicates)}")


class ConditionItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=HANDLE_ID, description="Names the handle condition-<id>.")
    expression: Any = Field(
        description="Expression such as 'inputs.score > 0.5' (or wrapped in {{ }}).",
        json_schema_extra={EXPRESSION: True},
    )


class ConditionConfig(NodeConfig):
    conditions: list[ConditionItem] = Field(min_length=1, json_schema_extra={UNIQUE_KEYS: ["id"]})
    mode: Literal["first", "all"] = "first"

    @field_validator("conditions")
    @classmethod
    def _unique_ids(cls, items: list[ConditionItem]) -> list[ConditionItem]:
        check_unique_ids([item.id for item in items], "condition")
        return items


def is_truthy(value: Any) -> bool:
    """Python truth, except that text such as "false" or "0" (common in JSON from other
    systems) counts as false."""
    if isinstance(value, str):
        return value.strip().lower() not in FALSY_TEXT
    return bool(value)


class ConditionHandler(NodeHandler):
    type = "condition"
    category = "logic"
    side_effects = False
    handle_docs = (
        HandleDoc(
            "condition-<id>",
            "Fires when that condition matched (the first match, or each in mode 'all').",
            "data.conditions[].id",
        ),
        HandleDoc("else", "Fires when no condition matched."),
        ERROR_HANDLE,
    )
    description = "Picks branches by ordered expressions; fires condition-<id> or else."
    Config = ConditionConfig
    expression_keys = frozenset({"expression"})
    control = True

    def handles(self, config: ConditionConfig) -> frozenset[str]:  # type: ignore[override]
        return frozenset({f"condition-{c.id}" for c in config.conditions} | {"else", "error"})

    async def run(self, config: ConditionConfig, ctx: NodeContext) -> Completed:
        matched = [c.id for c in config.conditions if is_truthy(c.expression)]
        if config.mode == "first":
            matched = matched[:1]
        handles = frozenset(f"condition-{m}" for m in matched) or frozenset({"else"})
        return Completed(output={"matched": matched}, handles=handles)


HANDLERS = [ConditionHandler]
