"""How much one compile may take: caps on a canvas's size and a time budget.

A canvas is untrusted input from any owner, and the API compiles it on validate, save,
execute, webhook delivery and schedule changes. The compiler is linear, but linear in a
canvas of millions of nodes is still minutes: these caps bound the work before it starts
(stage 1 counts nodes and edges before validating any; stage 3 measures container
nesting), and templates are measured before Jinja parses them (its parser recurses once
per bracket). The time budget is the last guard, checked between stages and inside the
long loops.

``CompileSettings`` reads them from ``FLOWMAESTRO_*`` environment variables, for the API
and the workers (both compile the same canvases: they must agree on the caps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LIMIT_CODES = frozenset({"too_many_nodes", "too_many_edges", "compile_time_exceeded"})
"""Issues that mean "too large to compile here" (the API answers 413), not "wrong" (422)."""


@dataclass(frozen=True)
class CompileLimits:
    max_nodes: int = 5_000
    max_edges: int = 20_000
    max_container_depth: int = 10
    """Containers inside containers: a node in a loop in a parallel is at depth 2."""
    max_template_chars: int = 100_000
    """Characters of one template or expression string."""
    max_template_nesting: int = 32
    """Brackets ``( [ {`` open at once inside one template string."""
    time_budget_s: float | None = None
    """Longest a compile may take before it stops with ``compile_time_exceeded``; None: no limit."""

    @classmethod
    def unlimited(cls) -> CompileLimits:
        """No caps (benchmarks that measure huge canvases)."""
        big = 10**9
        return cls(
            max_nodes=big, max_edges=big, max_container_depth=big, max_template_chars=big, max_template_nesting=big
        )


class CompileSettings(BaseSettings):
    """The caps, from the environment; the API and the workers' settings extend this."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAESTRO_", extra="ignore")

    max_canvas_nodes: int = Field(
        5_000, ge=1, description="Nodes a canvas may have; more are refused (413) before anything else is checked."
    )
    max_canvas_edges: int = Field(20_000, ge=1, description="Edges a canvas may have; more are refused (413).")
    max_container_depth: int = Field(10, ge=1, description="How deep containers (loop, parallel) may nest.")
    max_template_chars: int = Field(
        100_000, ge=1, description="Characters of one template or expression string of a canvas."
    )
    max_template_nesting: int = Field(
        32,
        ge=1,
        le=60,
        description="Brackets ( [ { one template may have open "
        "at once (Jinja's parser and renderer recurse once per level; past about "
        "60, Python's recursion limit).",
    )
    compile_time_budget_s: float = Field(
        10.0,
        gt=0,
        description="Longest the API spends compiling one canvas (off its event loop) before refusing it with 413.",
    )

    def compile_limits(self, *, timed: bool = True) -> CompileLimits:
        """The limits; ``timed=False`` leaves out the time budget (a worker compiles a saved
        version that passed the API's budget, and the caps already bound its work)."""
        return CompileLimits(
            max_nodes=self.max_canvas_nodes,
            max_edges=self.max_canvas_edges,
            max_container_depth=self.max_container_depth,
            max_template_chars=self.max_template_chars,
            max_template_nesting=self.max_template_nesting,
            time_budget_s=self.compile_time_budget_s if timed else None,
        )


class BudgetExceeded(Exception):
    """The compile ran past its time budget; ``stage`` says where it stopped."""

    def __init__(self, stage: str):
        super().__init__(stage)
        self.stage = stage


@dataclass
class Deadline:
    """When a compile must stop. ``check`` is cheap: call it between stages and every few
    hundred iterations of a long loop."""

    budget_s: float | None
    started: float = field(default_factory=time.monotonic)

    def check(self, stage: str) -> None:
        if self.budget_s is not None and time.monotonic() - self.started > self.budget_s:
            raise BudgetExceeded(stage)


NO_DEADLINE = Deadline(None)
