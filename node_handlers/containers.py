"""Configuration of the loop and parallel containers.

The engine runs container bodies itself (``flows/containers.py``); these handlers only
describe the configuration and the handles.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, model_validator

from builder.catalog import EXPRESSION, NOT_ABOVE, NodeConfig, Templatable, TemplateStr, not_null
from node_handlers.base import ERROR_HANDLE, HandleDoc, NodeHandler

DEFAULT_MAX_ITERATIONS = 1000
INSTALLATION_CAP = 10_000
"""Default of ``FLOWMAESTRO_MAX_LOOP_ITERATIONS`` (``HandlerSettings.max_loop_iterations``)."""
RESOLVED = "resolved"
"""Validation context key: the configuration is the one a run resolved, not the canvas's."""


def _loop_json_schema(schema: dict[str, Any], model: type[LoopConfig]) -> None:
    """What ``_fields_of_mode`` checks, as JSON Schema: each mode's field, a count that is
    not negative, and no more iterations known before the run than the caps allow."""
    cap = model.installation_cap
    schema["allOf"] = [
        {"if": {"properties": {"mode": {"const": mode}}, "required": ["mode"]}, "then": not_null(needed)}
        for mode, needed in _NEEDED.items()
    ]
    schema["allOf"].append({"properties": {"count": {"minimum": 0, "maximum": cap}, "items": {"maxItems": cap}}})
    schema[NOT_ABOVE] = {"count": "max_iterations", "items": "max_iterations"}


_NEEDED = {"for": "count", "forEach": "items", "while": "condition", "doWhile": "condition"}


class LoopConfig(NodeConfig):
    model_config = ConfigDict(json_schema_extra=_loop_json_schema)  # type: ignore[typeddict-item]
    mode: Literal["for", "forEach", "while", "doWhile"]
    count: Templatable[int] | None = Field(None, description="Iterations of a 'for' loop.")
    items: list[Any] | TemplateStr | None = Field(None, description="Array (or template giving one) for 'forEach'.")
    condition: Any = Field(
        None,
        description="Expression for while/doWhile; sees loop.index and loop.results.",
        json_schema_extra={EXPRESSION: True},
    )
    max_iterations: int = Field(DEFAULT_MAX_ITERATIONS, ge=1, le=1_000_000)
    installation_cap: ClassVar[int] = INSTALLATION_CAP
    """The installation's cap (FLOWMAESTRO_MAX_LOOP_ITERATIONS): a class of its own per cap
    (``loop_config``), so that the compiler and the engine, which validate with the
    handler's ``Config``, both apply the cap of the registry they were given."""

    @model_validator(mode="after")
    def _fields_of_mode(self, info: ValidationInfo) -> LoopConfig:
        needed = _NEEDED[self.mode]
        if getattr(self, needed) is None:
            raise ValueError(f"a {self.mode} loop needs '{needed}'")
        if isinstance(self.count, int) and self.count < 0:
            raise ValueError("count cannot be negative")
        # Known before the run (no template): refused when the canvas compiles. Once the run
        # resolved the templates, the loop itself fails (MaxIterationsExceeded, its error edge).
        if info.context and info.context.get(RESOLVED):
            return self
        static = (
            self.count
            if self.mode == "for" and isinstance(self.count, int)
            else len(self.items)
            if self.mode == "forEach" and isinstance(self.items, list)
            else None
        )
        if static is not None and static > self.iteration_cap:
            raise ValueError(f"the loop would run {static} iterations, more than {self.cap_name}")
        return self

    @property
    def iteration_cap(self) -> int:
        """The most iterations this loop runs: its max_iterations, within the process's cap."""
        return min(self.max_iterations, self.installation_cap)

    @property
    def cap_name(self) -> str:
        """Which limit ``iteration_cap`` is, as the error names it."""
        cap = self.installation_cap
        if self.max_iterations <= cap:
            return f"max_iterations={self.max_iterations}"
        return f"FLOWMAESTRO_MAX_LOOP_ITERATIONS={cap} (the most one loop execution may run on this installation)"


@functools.cache  # one class per cap: pydantic builds a validator per class
def loop_config(installation_cap: int) -> type[LoopConfig]:
    """``LoopConfig`` with the installation's cap on iterations."""
    if installation_cap == LoopConfig.installation_cap:
        return LoopConfig
    # Same name and module: the canvas's JSON Schema does not change with the cap.
    capped = type(
        "LoopConfig",
        (LoopConfig,),
        {"__module__": LoopConfig.__module__, "__qualname__": "LoopConfig", "installation_cap": installation_cap},
    )
    return capped


class LoopHandler(NodeHandler):
    type = "loop"
    category = "logic"
    side_effects = False  # its body nodes have their own
    handle_docs = (
        HandleDoc("source", "Fires when the last iteration ended; the output is {results, iterations}."),
        ERROR_HANDLE,
    )
    description = "Runs its body for a count, for each item, or while a condition holds, in order."
    Config = LoopConfig
    container = "loop"
    cacheable = False
    expression_keys = frozenset({"condition"})
    own_scope_keys = frozenset({"condition"})

    def __init__(self, max_loop_iterations: int = INSTALLATION_CAP):
        """``max_loop_iterations``: the installation's cap (``HandlerSettings``)."""
        self.Config = loop_config(max_loop_iterations)  # type: ignore[misc]


class ParallelConfig(NodeConfig):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {"if": {"properties": {"mode": {"const": "count"}}, "required": ["mode"]}, "then": not_null("count")},
                {
                    "if": {"properties": {"mode": {"const": "collection"}}, "required": ["mode"]},
                    "then": not_null("items"),
                },
                {"properties": {"count": {"minimum": 0}}},
            ]
        }
    )
    mode: Literal["count", "collection"]
    count: Templatable[int] | None = None
    items: list[Any] | TemplateStr | None = None
    max_concurrency: int | None = Field(
        None, ge=1, le=1000, description="Branches in flight at once (100 when not given)."
    )
    on_error: Literal["fail_fast", "collect"] = "fail_fast"

    @model_validator(mode="after")
    def _fields_of_mode(self) -> ParallelConfig:
        needed = "count" if self.mode == "count" else "items"
        if getattr(self, needed) is None:
            raise ValueError(f"parallel mode {self.mode!r} needs '{needed}'")
        if isinstance(self.count, int) and self.count < 0:
            raise ValueError("count cannot be negative")
        return self


class ParallelHandler(NodeHandler):
    type = "parallel"
    category = "logic"
    side_effects = False  # its body nodes have their own
    handle_docs = (
        HandleDoc("source", "Fires when every branch ended; the output is {results, errors}."),
        ERROR_HANDLE,
    )
    description = "Runs its body once per branch, concurrently, results in index order."
    Config = ParallelConfig
    container = "parallel"
    cacheable = False


HANDLERS = [LoopHandler, ParallelHandler]
