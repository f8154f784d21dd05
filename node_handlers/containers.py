"""Configuration of the loop and parallel containers.

The engine runs container bodies itself (``flows/containers.py``); these handlers only
describe the configuration and the handles.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from builder.catalog import NodeConfig, Templatable, TemplateStr
from node_handlers.base import NodeHandler

DEFAULT_MAX_ITERATIONS = 1000


class LoopConfig(NodeConfig):
    mode: Literal["for", "forEach", "while", "doWhile"]
    count: Templatable[int] | None = Field(None, description="Iterations of a 'for' loop.")
    items: list[Any] | TemplateStr | None = Field(None, description="Array (or template giving one) for 'forEach'.")
    condition: Any = Field(None, description="Expression for while/doWhile; sees loop.index and loop.results.")
    max_iterations: int = Field(DEFAULT_MAX_ITERATIONS, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _fields_of_mode(self) -> "LoopConfig":
        needed = {"for": "count", "forEach": "items", "while": "condition", "doWhile": "condition"}[self.mode]
        if getattr(self, needed) is None:
            raise ValueError(f"a {self.mode} loop needs '{needed}'")
        if isinstance(self.count, int) and self.count < 0:
            raise ValueError("count cannot be negative")
        return self


class LoopHandler(NodeHandler):
    type = "loop"
    description = "Runs its body for a count, for each item, or while a condition holds, in order."
    Config = LoopConfig
    container = "loop"
    cacheable = False
    expression_keys = frozenset({"condition"})
    own_scope_keys = frozenset({"condition"})


class ParallelConfig(NodeConfig):
    mode: Literal["count", "collection"]
    count: Templatable[int] | None = None
    items: list[Any] | TemplateStr | None = None
    max_concurrency: int | None = Field(None, ge=1, le=1000, description="Branches in flight at once (100 when "
                                        "not given).")
    on_error: Literal["fail_fast", "collect"] = "fail_fast"

    @model_validator(mode="after")
    def _fields_of_mode(self) -> "ParallelConfig":
        needed = "count" if self.mode == "count" else "items"
        if getattr(self, needed) is None:
            raise ValueError(f"parallel mode {self.mode!r} needs '{needed}'")
        if isinstance(self.count, int) and self.count < 0:
            raise ValueError("count cannot be negative")
        return self


class ParallelHandler(NodeHandler):
    type = "parallel"
    description = "Runs its body once per branch, concurrently, results in index order."
    Config = ParallelConfig
    container = "parallel"
    cacheable = False


HANDLERS = [LoopHandler, ParallelHandler]
